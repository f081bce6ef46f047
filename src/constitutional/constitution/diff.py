"""Compare two constitutions principle by principle, matched by id."""

from __future__ import annotations

from typing import Any

from constitutional.constitution.schema import Constitution

_FIELDS = ("name", "version", "description", "metadata")


def diff_constitutions(old: Constitution, new: Constitution) -> dict[str, Any]:
    """What changed from `old` to `new`, as plain JSON-ready data.

    Returns:
        `{"identical": bool, "old": {name, version, hash}, "new": {...}, "fields": {field:
        {"old", "new"}}, "sections": {section: {"added": [...], "removed": [...], "changed":
        [{"id", "old", "new"}]}}, "fewshot_changed": bool}`. Sections are critique_revision,
        comparison, categories.harmful and categories.harmless; entries are dumped principles.
        `fields` and `sections` list only what differs.
    """
    fields = {
        name: {"old": getattr(old, name), "new": getattr(new, name)}
        for name in _FIELDS
        if getattr(old, name) != getattr(new, name)
    }
    old_sections, new_sections = old._sections(), new._sections()
    sections = {}
    for section in old_sections:
        result = _diff_section(old_sections[section], new_sections[section])
        if any(result.values()):
            sections[section] = result
    return {
        "identical": old.hash == new.hash,
        "old": _summary(old),
        "new": _summary(new),
        "fields": fields,
        "sections": sections,
        "fewshot_changed": old.fewshot != new.fewshot,
    }


def _summary(c: Constitution) -> dict[str, str]:
    return {"name": c.name, "version": c.version, "hash": c.hash}


def _diff_section(old: list[Any], new: list[Any]) -> dict[str, list[dict[str, Any]]]:
    before = {item.id: item.model_dump(mode="json") for item in old}
    after = {item.id: item.model_dump(mode="json") for item in new}
    changed = []
    for key in before.keys() & after.keys():
        if before[key] != after[key]:
            changed.append(
                {"id": key, "old": _without_id(before[key]), "new": _without_id(after[key])}
            )
    return {
        "added": [after[key] for key in after if key not in before],
        "removed": [before[key] for key in before if key not in after],
        "changed": sorted(changed, key=lambda item: item["id"]),
    }


def _without_id(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "id"}


def format_diff(diff: dict[str, Any]) -> str:
    """A human-readable listing of `diff_constitutions` output: + added, - removed, ~ changed."""
    old, new = diff["old"], diff["new"]
    lines = [f"old: {old['name']} v{old['version']} ({old['hash'][:12]})"]
    lines.append(f"new: {new['name']} v{new['version']} ({new['hash'][:12]})")
    if diff["identical"]:
        return "\n".join([*lines, "no differences"])
    for name, change in diff["fields"].items():
        lines.append(f"{name}: {change['old']!r} -> {change['new']!r}")
    for section, change in diff["sections"].items():
        lines.append(f"{section}:")
        lines += [f"  + {item['id']}" for item in change["added"]]
        lines += [f"  - {item['id']}" for item in change["removed"]]
        for item in change["changed"]:
            lines.append(f"  ~ {item['id']}")
            for key, value in item["new"].items():
                if item["old"].get(key) != value:
                    lines.append(f"      {key}: {item['old'].get(key)!r}")
                    lines.append(f"   -> {key}: {value!r}")
    if diff["fewshot_changed"]:
        lines.append("fewshot: exemplars changed")
    return "\n".join(lines)
