"""One date format everywhere (lists, detail pages, the app page's recent history): ISO-like
and unambiguous, instead of English's "Dec. 1, 2026, 2:55 p.m." beside "2026-12-01 14:55:00".
Django reads it through ``FORMAT_MODULE_PATH`` (settings.py) for the ``en`` locale."""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
