"""The AudioSet ontology: nodes, parent/child maps, depth, ancestors, and class-name matching.

The file is AudioSet's ``ontology.json``: a JSON list of ``{"id", "name", "child_ids", ...}``
(``restrictions``, ``description`` and the rest are kept as read or ignored). The ontology is a
DAG, not a tree: 38 AudioSet nodes have several parents.

Terms, used the same way everywhere here:

- root: a node that is no node's child (AudioSet has 7 top-level categories, e.g. "Animal").
- ``depth(v)``: the fewest edges on a downward path from any root to v; roots have depth 0.
  A node with several parents takes its shallowest path (breadth-first search from the roots).
- ``ancestors(v)``: every node reachable upward from v through parent links, v excluded.
- class names match node names by ``data.labels.label_key`` (case-folded, whitespace
  collapsed, spacing around commas ignored), the rule that matches parquet labels to classes.

The ontology matched to a class list, over class and prompt indices (parents, ancestors,
depth, the cone pairs), is ``hyperbolic.hierarchy.cones.Hierarchy``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from data.labels import label_key
from hyperbolic.errors import OntologyError  # noqa: F401 (re-exported)

__all__ = ["Ontology", "OntologyError", "OntologyNode"]


def nearest_kept_ancestors(parents, node, keep) -> set:
    """Ancestors of ``node`` that are in ``keep``, reached without passing through another kept
    node (nodes not kept are walked through). ``parents``: node -> iterable of its parents."""
    found, stack, seen = set(), list(parents[node]), set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        if p in keep:
            found.add(p)
        else:
            stack.extend(parents[p])
    return found


@dataclass(frozen=True)
class OntologyNode:
    id: str
    name: str
    restrictions: tuple[str, ...] = ()


class Ontology:
    """Parent/child maps over the nodes of an ontology, in file order."""

    def __init__(self, records: Sequence[dict], *, source: str = "<records>"):
        self.source = source
        nodes: dict[str, OntologyNode] = {}
        children: dict[str, tuple[str, ...]] = {}
        for i, rec in enumerate(records):
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) \
                    or not isinstance(rec.get("name"), str):
                raise OntologyError(f"ontology {source}: entry {i} needs string 'id' and 'name' (got {rec!r:.120})")
            if rec["id"] in nodes:
                raise OntologyError(f"ontology {source}: id {rec['id']!r} appears twice")
            kids = rec.get("child_ids", [])
            if not isinstance(kids, list) or not all(isinstance(k, str) for k in kids):
                raise OntologyError(f"ontology {source}: 'child_ids' of {rec['id']!r} must be a list of ids")
            nodes[rec["id"]] = OntologyNode(rec["id"], rec["name"], tuple(rec.get("restrictions", ())))
            children[rec["id"]] = tuple(dict.fromkeys(kids))  # a repeated child id is one edge
        parents: dict[str, list[str]] = {v: [] for v in nodes}
        for v, kids in children.items():
            for k in kids:
                if k not in nodes:
                    raise OntologyError(f"ontology {source}: {v!r} lists child {k!r}, which is not a node")
                parents[k].append(v)
        self.nodes = nodes
        self.children = children
        self.parents: dict[str, tuple[str, ...]] = {v: tuple(ps) for v, ps in parents.items()}
        self.roots: tuple[str, ...] = tuple(v for v in nodes if not parents[v])
        self._check_acyclic()
        self._by_key: dict[str, str] = {}
        for v, node in nodes.items():
            self._by_key.setdefault(label_key(node.name), v)  # first in file order wins a name clash
        self._ancestors: dict[str, frozenset[str]] = {}

    @classmethod
    def load(cls, path: str | Path) -> Ontology:
        """Read an AudioSet-style ``ontology.json``; OntologyError names the file on any problem."""
        path = Path(path)
        if not path.is_file():
            raise OntologyError(f"--ontology {path} does not exist or is not a file; pass AudioSet's "
                                "ontology.json (github.com/audioset/ontology)")
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise OntologyError(f"--ontology {path} is not valid UTF-8 JSON: {err}") from err
        if not isinstance(records, list):
            raise OntologyError(f"--ontology {path}: expected a JSON list of nodes, got {type(records).__name__}")
        return cls(records, source=str(path))

    def _check_acyclic(self) -> None:
        # Kahn's algorithm: every node is reached from the roots iff there is no cycle.
        pending = {v: len(ps) for v, ps in self.parents.items()}
        queue = deque(self.roots)
        seen = 0
        while queue:
            v = queue.popleft()
            seen += 1
            for k in self.children[v]:
                pending[k] -= 1
                if pending[k] == 0:
                    queue.append(k)
        if seen != len(self.nodes):
            stuck = [self.nodes[v].name for v, n in pending.items() if n > 0][:5]
            raise OntologyError(f"ontology {self.source} has a cycle (through e.g. {stuck})")

    # ------------------------------------------------------------------------ nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def node_id(self, name: str) -> str | None:
        """The id of the node named ``name`` (matched by ``label_key``), or None."""
        return self._by_key.get(label_key(name))

    def name(self, node_id: str) -> str:
        return self.nodes[node_id].name

    @cached_property
    def _depths(self) -> dict[str, int]:
        depth = {r: 0 for r in self.roots}
        queue = deque(self.roots)
        while queue:  # breadth first: a node's first visit is along its shallowest path
            v = queue.popleft()
            for k in self.children[v]:
                if k not in depth:
                    depth[k] = depth[v] + 1
                    queue.append(k)
        return depth

    def depth(self, node_id: str) -> int:
        """Fewest edges from a root down to ``node_id``; 0 for a root."""
        return self._depths[node_id]

    def ancestors(self, node_id: str) -> frozenset[str]:
        """Every node above ``node_id`` (parents, their parents, ...), itself excluded."""
        if node_id not in self._ancestors:
            out: set[str] = set()
            for p in self.parents[node_id]:
                out.add(p)
                out |= self.ancestors(p)  # depth of recursion <= the ontology's depth (6 in AudioSet)
            self._ancestors[node_id] = frozenset(out)
        return self._ancestors[node_id]

    def top_level(self, node_id: str) -> tuple[str, ...]:
        """The roots above (or equal to) ``node_id``, in file order."""
        above = self.ancestors(node_id) | {node_id}
        return tuple(r for r in self.roots if r in above)

    # ---------------------------------------------------------------------- classes

    def match(self, class_names: Sequence[str]) -> tuple[list[str | None], list[str]]:
        """``(node id or None per class, names of the unmatched classes in class order)``."""
        ids = [self.node_id(n) for n in class_names]
        return ids, [n for n, v in zip(class_names, ids) if v is None]
