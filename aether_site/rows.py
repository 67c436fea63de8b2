"""SELECT, INSERT and UPDATE of whole model rows with the statement text built once per model.

For the hot paths only — order submission (one simulated order writes about ten rows) and the strategy
cycle's per-account reads — where Django's ``Model.save()``, ``bulk_create()`` and querysets spent more
time building each statement than the database spent running it. The
values go through the same field methods the ORM uses (``pre_save``, so ``auto_now`` and ``auto_now_add``
hold, then ``get_db_prep_save``; rows read pass through the engine's and the field's converters, as the
ORM's compiler applies them), and the statements are plain SQL both engines run. What these do not do:
send ``pre_save``/``post_save`` signals (so they are for models without receivers, or whose receivers the
caller replaces, as the order service writes ``Order``'s history rows itself), run ``save()`` overrides,
or handle multi-table inheritance. Use ``Model.save()`` everywhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from django.db import connections, models, router
from django.db.transaction import TransactionManagementError


@functools.cache
def _insert_plan(model: type[models.Model], vendor: str, rows: int) -> tuple[str, tuple, models.Field | None]:
    meta = model._meta
    if meta.parents:
        raise TypeError(f"{meta.label}: multi-table inheritance is not supported here; use save()")
    pk = meta.pk
    generated = isinstance(pk, models.AutoField | models.BigAutoField | models.SmallAutoField)
    fields = tuple(field for field in meta.concrete_fields if not (generated and field is pk))
    connection = _connection_of(model)
    quote = connection.ops.quote_name
    one = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(field.column) for field in fields)}) "  # noqa: S608
        f"VALUES {', '.join([one] * rows)}"
    )
    if generated:
        sql += f" RETURNING {quote(pk.column)}"
    return sql, fields, pk if generated else None


@functools.cache
def _update_plan(model: type[models.Model], vendor: str, names: tuple[str, ...] | None) -> tuple[str, tuple]:
    meta = model._meta
    if meta.parents:
        raise TypeError(f"{meta.label}: multi-table inheritance is not supported here; use save()")
    if names is None:
        fields = tuple(field for field in meta.concrete_fields if not field.primary_key)
    else:
        fields = tuple(meta.get_field(name) for name in names)
        if any(field.primary_key or not field.concrete for field in fields):
            raise ValueError(f"{meta.label}: only concrete non-key fields can be updated: {names}")
    connection = _connection_of(model)
    quote = connection.ops.quote_name
    sets = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    sql = f"UPDATE {quote(meta.db_table)} SET {sets} WHERE {quote(meta.pk.column)} = %s"  # noqa: S608
    return sql, fields


def _connection_of(model: type[models.Model]):
    return connections[router.db_for_write(model)]


def insert_rows(objects: Sequence[models.Model]) -> None:
    """INSERT ``objects`` (all of one model) in one statement, as ``save()`` of each would: ``auto_now_add``
    and ``auto_now`` set on the objects, a generated key read back into each (``RETURNING``), and each
    object marked as stored. No signals are sent, and unlike ``save()`` a related object assigned before
    it was stored is not checked: assign related objects once they have their key."""
    if not objects:
        return
    model = type(objects[0])
    if any(type(obj) is not model for obj in objects):
        raise TypeError("insert_rows() takes objects of one model")
    connection = _connection_of(model)
    sql, fields, generated = _insert_plan(model, connection.vendor, len(objects))
    params = []
    for obj in objects:
        if generated is not None and obj.pk is not None:
            raise ValueError(f"{model._meta.label}: the key is generated; this object already has one")
        params.extend(field.get_db_prep_save(field.pre_save(obj, True), connection) for field in fields)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        keys = cursor.fetchall() if generated is not None else ()
    if generated is not None and len(keys) != len(objects):
        raise RuntimeError(f"{model._meta.label}: {len(objects)} rows inserted but {len(keys)} keys returned")
    for n, obj in enumerate(objects):
        if generated is not None:
            setattr(obj, generated.attname, keys[n][0])
        obj._state.adding = False
        obj._state.db = connection.alias


def update_row(obj: models.Model, fields: Iterable[str] | None = None) -> None:
    """UPDATE the stored row of ``obj`` with its ``fields`` (every concrete field but the key when
    ``None``), as ``save(update_fields=fields)`` would; ``auto_now`` fields named (or all, with ``None``)
    are set to now. Raises when no row has the object's key. No signals are sent."""
    model = type(obj)
    if obj.pk is None or obj._state.adding:
        raise ValueError(f"{model._meta.label}: update_row() needs a stored object")
    connection = _connection_of(model)
    sql, plan = _update_plan(model, connection.vendor, None if fields is None else tuple(fields))
    params = [field.get_db_prep_save(field.pre_save(obj, False), connection) for field in plan]
    params.append(model._meta.pk.get_db_prep_value(obj.pk, connection))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if cursor.rowcount != 1:
            raise model.DoesNotExist(f"{model._meta.label} {obj.pk}: no stored row to update")


def _select_plan(
    connection, model: type[models.Model], names: tuple[str, ...] | None, where: str, suffix: str
) -> tuple[str, tuple, tuple]:
    """Kept on the connection (one per thread): the engine's converters are methods of its own ``ops``."""
    plans = connection.__dict__.setdefault("_aether_select_plans", {})
    key = (model, names, where, suffix)
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = _new_select_plan(connection, model, names, where, suffix)
    return plan


def _new_select_plan(connection, model, names, where, suffix) -> tuple[str, tuple, tuple]:
    meta = model._meta
    if meta.parents:
        raise TypeError(f"{meta.label}: multi-table inheritance is not supported here; use the ORM")
    quote = connection.ops.quote_name
    fields = tuple(meta.concrete_fields) if names is None else tuple(meta.get_field(name) for name in names)
    columns = ", ".join(quote(field.column) for field in fields)
    sql = f"SELECT {columns} FROM {quote(meta.db_table)} WHERE {where}{suffix}"  # noqa: S608
    converters = []
    for field in fields:
        column = field.get_col(meta.db_table)
        found = connection.ops.get_db_converters(column) + field.get_db_converters(connection)
        converters.append((column, tuple(found)) if found else None)
    return sql, tuple(field.attname for field in fields), tuple(converters)


def _select(model, names, where, params, order_by, limit, for_update):
    connection = _connection_of(model)
    suffix = f" ORDER BY {order_by}" if order_by else ""
    if limit is not None:
        suffix += f" LIMIT {int(limit)}"
    if for_update and connection.features.has_select_for_update:
        if connection.get_autocommit():  # as the ORM: a lock outside a transaction would end at once
            raise TransactionManagementError("select_rows(for_update=...) must run inside a transaction")
        # "no key": FOR NO KEY UPDATE, as select_for_update(no_key=True), where the engine has it.
        no_key = for_update == "no key" and connection.features.has_select_for_no_key_update
        suffix += " FOR NO KEY UPDATE" if no_key else " FOR UPDATE"
    sql, attnames, converters = _select_plan(connection, model, names, where, suffix)
    with connection.cursor() as cursor:
        cursor.execute(sql, list(params))
        rows = cursor.fetchall()
    converted = []
    for row in rows:
        values = list(row)
        for n, plan in enumerate(converters):
            if plan is None:
                continue
            column, functions = plan
            for function in functions:  # as the ORM's compiler applies them (None included)
                values[n] = function(values[n], column, connection)
        converted.append(values)
    return connection, attnames, converted


def select_rows(
    model: type[models.Model],
    where: str,
    params: Sequence,
    *,
    order_by: str = "",
    limit: int | None = None,
    for_update: bool | str = False,
) -> list[models.Model]:
    """The ``model`` rows matching ``where`` (SQL on the model's own columns, ``%s`` for ``params``), as
    model instances, ordered by ``order_by`` (SQL; none by default), at most ``limit``. ``for_update``:
    locked ``FOR UPDATE`` (``"no key"``: ``FOR NO KEY UPDATE``) where the engine has row locks, as
    ``select_for_update()`` (SQLite locks the whole database on write). Parameters go to the driver as
    they are: pass numbers, strings and booleans (a datetime would need the engine's adaptation)."""
    connection, attnames, rows = _select(model, None, where, params, order_by, limit, for_update)
    return [model.from_db(connection.alias, attnames, values) for values in rows]


def select_values(
    model: type[models.Model],
    fields: Sequence[str],
    where: str,
    params: Sequence,
    *,
    order_by: str = "",
    limit: int | None = None,
) -> list[tuple]:
    """``fields`` of the ``model`` rows matching ``where`` as tuples (``values_list``), converted as the ORM
    converts them; ``where``, ``order_by`` and ``limit`` as for :func:`select_rows`."""
    _connection, _names, rows = _select(model, tuple(fields), where, params, order_by, limit, False)
    return [tuple(values) for values in rows]
