"""The verify group: every file event's content checked, a verification published."""
