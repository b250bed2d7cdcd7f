"""A small checker for the subset of JSON Schema the API's generated OpenAPI 3.1 document uses
(type, null, anyOf, allOf, properties, required, additionalProperties, items, enum, pattern,
min/maxLength, minItems, $ref). Used by the tests to hold every API response to the published
document."""

from __future__ import annotations

import re

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
    "null": type(None),
}


def errors(instance: object, schema: dict, document: dict, path: str = "$") -> list[str]:
    """Every way ``instance`` breaks ``schema`` (refs resolved in ``document``); empty if valid."""
    if "$ref" in schema:
        target: object = document
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]  # type: ignore[index]
        return errors(instance, target, document, path)  # type: ignore[arg-type]
    if "allOf" in schema:
        return [problem for part in schema["allOf"] for problem in errors(instance, part, document, path)]
    if "anyOf" in schema:
        tries = [errors(instance, part, document, path) for part in schema["anyOf"]]
        return [] if any(not problems for problems in tries) else [p for problems in tries for p in problems]
    found: list[str] = []
    if instance is None and schema.get("type") != "null":
        return [] if schema.get("nullable") else [f"{path}: null is not allowed"]
    kind = schema.get("type")
    if kind:
        expected = _TYPES[kind]
        wrong_bool = kind in ("integer", "number") and isinstance(instance, bool)
        if not isinstance(instance, expected) or wrong_bool:
            return [f"{path}: expected {kind}, got {type(instance).__name__}"]
    if "enum" in schema and instance not in schema["enum"]:
        found.append(f"{path}: {instance!r} not one of {schema['enum']}")
    if isinstance(instance, str):
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            found.append(f"{path}: {instance!r} does not match {schema['pattern']}")
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            found.append(f"{path}: longer than {schema['maxLength']}")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            found.append(f"{path}: fewer than {schema['minItems']} items")
        for index, item in enumerate(instance):
            found += errors(item, schema.get("items", {}), document, f"{path}[{index}]")
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in instance:
                found.append(f"{path}: missing required {name!r}")
        extra = schema.get("additionalProperties", True)
        for name, value in instance.items():
            if name in properties:
                found += errors(value, properties[name], document, f"{path}.{name}")
            elif extra is False:
                found.append(f"{path}: unexpected property {name!r}")
            elif isinstance(extra, dict):
                found += errors(value, extra, document, f"{path}.{name}")
    return found


def response_errors(document: dict, path_template: str, method: str, status: int, body: object) -> list[str]:
    """Check one response against the document's declared response for it."""
    operation = document["paths"].get(path_template, {}).get(method.lower())
    if operation is None:
        return [f"{method} {path_template} is not documented"]
    declared = operation["responses"].get(str(status))
    if declared is None:
        return [f"{method} {path_template} does not document status {status}"]
    content = declared.get("content")
    if content is None:
        return [] if body in (None, b"", "") else [f"status {status} documents no body"]
    return errors(body, content["application/json"]["schema"], document)
