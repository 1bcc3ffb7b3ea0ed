"""The operator's calendar overrides (DIR/calendar-overrides.json): read, merged on import, listed."""

from __future__ import annotations

import json
import os
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from node.core.calendar import Calendar, Overrides, load_overrides, parse_overrides
from node.core.errors import ConfigError
from node.features.rules.settings import RulesSettings

OVERRIDES_FILE = "calendar-overrides.json"


def overrides_path(home_dir: Path) -> Path:
    return Path(home_dir) / OVERRIDES_FILE


def stored_overrides(home_dir: Path) -> Overrides:
    """The operator's calendar overrides kept in the node home (empty when none were imported)."""
    path = overrides_path(home_dir)
    if not path.exists():
        return Overrides()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e})",
                          fix="restore it from backup, or delete it and `fednode calendar import` again") from None
    rows = [{"date": y, "kind": "year"} for y in doc.get("years", [])] + list(doc.get("days", []))
    return parse_overrides(rows, source=str(path))


def load_calendar(home_dir: Path, settings: RulesSettings) -> Calendar:
    return Calendar(settings.office_hours, stored_overrides(home_dir))


def import_overrides(home_dir: Path, file: str | Path) -> dict[str, Any]:
    """Validate FILE and merge it into the stored overrides (a date in FILE replaces the stored one)."""
    new = load_overrides(file)
    merged = stored_overrides(home_dir).merged(new)
    doc = {
        "years": sorted(merged.years),
        "days": [{"date": d.isoformat(), "kind": o.kind, "name": o.name} for d, o in sorted(merged.days.items())],
    }
    path = overrides_path(home_dir)
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: the node never reads a half-written file
    return {"file": str(file), "days": len(new.days), "years": sorted(new.years), "stored": str(path),
            "total_days": len(merged.days), "total_years": sorted(merged.years)}


def _official_name(d: date) -> str:
    """The holiday a date belongs to (or is a make-up day for), in Chinese, from chinese-calendar."""
    try:
        import chinese_calendar
        from chinese_calendar.constants import Holiday

        english = chinese_calendar.get_holiday_detail(d)[1]
    except (ImportError, NotImplementedError):
        return ""
    if not english:
        return ""
    return next((str(h.chinese) for h in Holiday if h.value == english), str(english))


def special_days(cal: Calendar, year: int) -> list[dict[str, Any]]:
    """Days of ``year`` that differ from the Monday-Friday week: holidays and make-up working days."""
    out = []
    d = date(year, 1, 1)
    while d.year == year:
        working = cal.is_working_day(d)
        if working != (d.weekday() < 5):
            forced = cal.overrides.days.get(d)
            name = forced.name if forced else _official_name(d)
            out.append({"date": d.isoformat(), "kind": "work" if working else "holiday",
                        "name": name, "source": "operator" if forced else "official"})
        d += timedelta(days=1)
    return out
