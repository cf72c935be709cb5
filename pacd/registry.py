"""The owner's containers as the daemon knows them: spec, identity, approved plugins.

This is the durable record; the runtime (Podman) state of each agent lives
elsewhere and is looked up when needed. The spec is stored as the canonical
JSON of the *parsed* spec, so what is stored is exactly what was validated, and
the :class:`PersonalAIContainer` is rebuilt from it on demand.

Writes that belong to a larger decision (e.g. an approval) take the caller's
``sqlite3.Connection`` so they commit or roll back with it.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any

from pacd.core.canonical import canonical_json
from pacd.core.models import PersonalAIContainer, PluginAPISchema
from pacd.core.plugins import parse_plugin_schema
from pacd.core.spec import ContainerSpec, build_container, parse_container_spec
from pacd.errors import Conflict, NotFound
from pacd.integrity import RowSpec
from pacd.store import Store

_SCHEMA = """
CREATE TABLE registry_containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    owner_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE registry_plugins (
    container_id TEXT NOT NULL REFERENCES registry_containers(id) ON DELETE CASCADE,
    plugin_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    schema TEXT NOT NULL,
    approval_id TEXT NOT NULL,
    approved_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'approved',
    PRIMARY KEY (container_id, plugin_id, agent)
)
"""
_SCHEMA_V2 = """
ALTER TABLE registry_containers ADD COLUMN mac BLOB;
ALTER TABLE registry_plugins ADD COLUMN mac BLOB
"""
# The image a plugin was approved with: its own table (rows of registry_plugins keep
# their MACs as they were), one row per approved plugin that names an image.
_SCHEMA_V3 = """
CREATE TABLE registry_plugin_images (
    container_id TEXT NOT NULL,
    plugin_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    image TEXT NOT NULL,
    image_digest TEXT NOT NULL,
    mac BLOB,
    PRIMARY KEY (container_id, plugin_id, agent),
    FOREIGN KEY (container_id, plugin_id, agent)
        REFERENCES registry_plugins(container_id, plugin_id, agent) ON DELETE CASCADE
)
"""
# The spec holds the policy and every agent's connections: MACed whole, as stored.
_CONTAINER = RowSpec("registry_containers", ("id",), ("name", "owner_id", "spec", "created_at"))
_PLUGIN = RowSpec("registry_plugins", ("container_id", "plugin_id", "agent"),
                  ("name", "version", "schema", "approval_id", "approved_at", "state"))
_PLUGIN_IMAGE = RowSpec("registry_plugin_images", ("container_id", "plugin_id", "agent"),
                        ("image", "image_digest"))


@dataclass(frozen=True)
class ContainerRecord:
    id: str
    name: str
    owner_id: str
    spec: dict[str, Any]
    created_at: float

    def model(self) -> PersonalAIContainer:
        return build_container(parse_container_spec(self.spec), self.id, self.owner_id,
                               self.created_at)


@dataclass(frozen=True)
class PluginRecord:
    container_id: str
    plugin_id: str
    agent: str
    name: str
    version: str
    schema: dict[str, Any]
    approval_id: str
    approved_at: float
    state: str
    #: the image as the owner named it, and the digest (image id) the owner approved;
    #: both empty for a plugin approved without an image (it never runs)
    image: str = ""
    image_digest: str = ""

    def model(self) -> PluginAPISchema:
        return parse_plugin_schema(self.schema)


class ContainerRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store
        store.migrate("registry", 1, _SCHEMA)
        store.migrate("registry", 2, _SCHEMA_V2)
        store.migrate("registry", 3, _SCHEMA_V3)

    def add(self, spec: ContainerSpec, owner_id: str, now: float) -> ContainerRecord:
        record = ContainerRecord(
            id=uuid.uuid4().hex, name=spec.name, owner_id=owner_id,
            spec=spec.to_json(), created_at=now,
        )
        row: dict[str, object] = {
            "id": record.id, "name": record.name, "owner_id": record.owner_id,
            "spec": canonical_json(record.spec).decode(), "created_at": record.created_at}
        row["mac"] = self.store.integrity.seal_row(_CONTAINER, row)
        with self.store.transaction() as conn:
            taken = conn.execute("SELECT 1 FROM registry_containers WHERE name = ?",
                                 (spec.name,)).fetchone()
            if taken is not None:
                raise Conflict(f"a container named {spec.name!r} already exists")
            conn.execute(
                "INSERT INTO registry_containers (id, name, owner_id, spec, created_at, mac)"
                " VALUES (:id, :name, :owner_id, :spec, :created_at, :mac)", row)
        return record

    def get(self, ref: str) -> ContainerRecord:
        """A container by id or by name (one whose MAC fails is not found)."""
        rows = self.store.query(
            "SELECT * FROM registry_containers WHERE id = ? OR name = ? ORDER BY id = ? DESC",
            (ref, ref, ref),
        )
        for row in rows:
            if self.store.integrity.row_ok(_CONTAINER, row):
                return _container(row)
        raise NotFound(f"no container {ref!r}")

    def count(self) -> int:
        row = self.store.query_one("SELECT COUNT(*) FROM registry_containers")
        return 0 if row is None else int(row[0])

    def all(self) -> list[ContainerRecord]:
        rows = self.store.query("SELECT * FROM registry_containers ORDER BY created_at, id")
        return [_container(r) for r in rows if self.store.integrity.row_ok(_CONTAINER, r)]

    def remove(self, container_id: str) -> None:
        """Delete a container record (joins the caller's transaction if there is one)."""
        with self.store.transaction() as conn:
            cur = conn.execute("DELETE FROM registry_containers WHERE id = ?", (container_id,))
            if cur.rowcount != 1:
                raise NotFound(f"no container {container_id!r}")

    def plugins(self, container_id: str) -> list[PluginRecord]:
        rows = self.store.query(
            "SELECT * FROM registry_plugins WHERE container_id = ? ORDER BY approved_at, name",
            (container_id,),
        )
        images: dict[tuple[str, str], tuple[str, str]] = {}
        for r in self.store.query("SELECT * FROM registry_plugin_images WHERE container_id = ?",
                                  (container_id,)):
            # A row whose MAC fails names no image: that plugin does not run.
            if self.store.integrity.row_ok(_PLUGIN_IMAGE, r):
                images[(str(r["plugin_id"]), str(r["agent"]))] = (str(r["image"]),
                                                                 str(r["image_digest"]))
        return [_plugin(r, images.get((str(r["plugin_id"]), str(r["agent"])), ("", "")))
                for r in rows if self.store.integrity.row_ok(_PLUGIN, r)]

    def remove_plugin(self, container_id: str, plugin_id: str, agent: str) -> None:
        """Forget an approved plugin (uninstalled); NotFound if it was not there."""
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM registry_plugin_images WHERE container_id = ? AND"
                         " plugin_id = ? AND agent = ?", (container_id, plugin_id, agent))
            cur = conn.execute("DELETE FROM registry_plugins WHERE container_id = ? AND"
                               " plugin_id = ? AND agent = ?", (container_id, plugin_id, agent))
            if cur.rowcount != 1:
                raise NotFound(f"no plugin {plugin_id!r} for agent {agent!r}")

    def record_plugin(self, conn: sqlite3.Connection, container_id: str, agent: str, *,
                      schema: PluginAPISchema, approval_id: str, now: float,
                      image: str = "", image_digest: str = "") -> PluginRecord:
        """Record an approved plugin inside the caller's transaction."""
        exists = conn.execute("SELECT * FROM registry_containers WHERE id = ?",
                              (container_id,)).fetchone()
        if exists is None or not self.store.integrity.row_ok(_CONTAINER, exists):
            raise NotFound(f"container {container_id!r} no longer exists")
        dup = conn.execute(
            "SELECT 1 FROM registry_plugins WHERE container_id = ? AND plugin_id = ?"
            " AND agent = ?", (container_id, schema.id, agent),
        ).fetchone()
        if dup is not None:
            raise Conflict(f"plugin {schema.name!r} is already approved for agent {agent!r}")
        record = PluginRecord(container_id, schema.id, agent, schema.name, schema.version,
                              schema.to_json(), approval_id, now, "approved", image,
                              image_digest)
        row: dict[str, object] = {
            "container_id": container_id, "plugin_id": schema.id, "agent": agent,
            "name": schema.name, "version": schema.version,
            "schema": canonical_json(record.schema).decode(), "approval_id": approval_id,
            "approved_at": now, "state": record.state}
        row["mac"] = self.store.integrity.seal_row(_PLUGIN, row)
        conn.execute(
            "INSERT INTO registry_plugins (container_id, plugin_id, agent, name, version, schema,"
            " approval_id, approved_at, state, mac) VALUES (:container_id, :plugin_id, :agent,"
            " :name, :version, :schema, :approval_id, :approved_at, :state, :mac)", row)
        if image:
            img: dict[str, object] = {"container_id": container_id, "plugin_id": schema.id,
                                      "agent": agent, "image": image,
                                      "image_digest": image_digest}
            img["mac"] = self.store.integrity.seal_row(_PLUGIN_IMAGE, img)
            conn.execute(
                "INSERT INTO registry_plugin_images (container_id, plugin_id, agent, image,"
                " image_digest, mac) VALUES (:container_id, :plugin_id, :agent, :image,"
                " :image_digest, :mac)", img)
        return record


def _container(row: sqlite3.Row) -> ContainerRecord:
    return ContainerRecord(str(row["id"]), str(row["name"]), str(row["owner_id"]),
                           json.loads(row["spec"]), float(row["created_at"]))


def _plugin(row: sqlite3.Row, image: tuple[str, str]) -> PluginRecord:
    return PluginRecord(str(row["container_id"]), str(row["plugin_id"]), str(row["agent"]),
                        str(row["name"]), str(row["version"]), json.loads(row["schema"]),
                        str(row["approval_id"]), float(row["approved_at"]), str(row["state"]),
                        image[0], image[1])
