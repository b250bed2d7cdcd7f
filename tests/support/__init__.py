"""Helpers the tests share: real services and run ids (services), processes on loopback
(processes), the real test cluster (cluster), named users (users) and an API client (api)."""
