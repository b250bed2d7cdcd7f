import pytest
from django.core.exceptions import ValidationError

from apps_registry.names import validate_app_name


@pytest.mark.parametrize("name", ["", "a" * 41, "../x", "Admin", "main", "ñ", "a b", "1abc", "_x", "abc\n", "a-b"])
def test_refused_app_names(name):
    with pytest.raises(ValidationError):
        validate_app_name(name)


@pytest.mark.parametrize("name", ["sales_eu", "a", "a" * 40, "crm2"])
def test_accepted_app_names(name):
    validate_app_name(name)


def test_reserved_name_message_says_reserved():
    with pytest.raises(ValidationError, match="reserved"):
        validate_app_name("admin")
