"""YAML for files a stranger may have written: safe types only, and no aliases.

An alias (`*a`) makes a ten-line file expand into a structure of billions of elements when it is walked (the
"billion laughs"); recipes and sidecars never need one, so any alias is refused while the file is parsed.
"""

from __future__ import annotations

from typing import Any

import yaml


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that raises on the first alias instead of sharing the anchored node."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed here; write the values out", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml_text(text: str) -> Any:
    """`yaml.safe_load` without aliases: raises yaml.YAMLError on any alias or syntax error."""
    return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass: safe types only
