"""Discovery adapters: where apps and environments are configured (placeholder)."""


class _NullDiscovery:
    def publish_app_by_pk(self, pk: int) -> None: ...

    def unpublish_app(self, name: str) -> None: ...

    def publish_environment_by_pk(self, pk: int) -> None: ...

    def unpublish_environment(self, name: str) -> None: ...


def get_discovery() -> _NullDiscovery:
    return _NullDiscovery()
