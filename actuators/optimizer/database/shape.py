"""What a statement asks of its tables: predicates, join keys, sort keys and what binds each parameter.

The statement is parsed with PostgreSQL's own grammar (pglast, libpg_query). Only what an
index can serve is kept: ``column op value`` comparisons in WHERE and JOIN ... ON
(``=``, ``<``, ``<=``, ``>``, ``>=``, ``IN``, ``BETWEEN``, ``IS NULL``, prefix ``LIKE``),
equality joins between two tables' columns, and ORDER BY columns of one table. Columns are
resolved to tables through aliases; an unqualified column in a statement over several tables
is resolved later, against the catalog (:func:`resolve`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, BoolExprType, NullTestType, SortByDir
from pglast.parser import ParseError

Kind = Literal["eq", "range", "null", "join"]
Verb = Literal["select", "insert", "update", "delete", "other"]

_RANGE_OPERATORS = {"<", "<=", ">", ">=", "~~"}
_REVERSED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "~~": "~~"}


@dataclass(frozen=True)
class Predicate:
    """``table.column`` compared with a value (``eq``, ``range``, ``null``) or joined to another table."""

    table: str | None
    column: str
    kind: Kind


@dataclass(frozen=True)
class SortKey:
    table: str | None
    column: str
    descending: bool


@dataclass
class ParamUse:
    """What parameter ``$n`` stands for: a value of ``table.column``, a LIMIT, an OFFSET, or unknown."""

    role: Literal["column", "limit", "offset", "other"]
    table: str | None = None
    column: str | None = None


@dataclass
class QueryShape:
    verb: Verb
    tables: dict[str, str] = field(default_factory=dict)  # alias or name -> table name
    predicates: list[Predicate] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    params: dict[int, ParamUse] = field(default_factory=dict)
    written: str | None = None  # the table an INSERT, UPDATE or DELETE changes

    @property
    def table_names(self) -> set[str]:
        return set(self.tables.values())

    def predicates_on(self, table: str) -> list[Predicate]:
        return [predicate for predicate in self.predicates if predicate.table == table]

    def sort_on(self, table: str) -> list[SortKey]:
        """The ORDER BY columns when every one of them is ``table``'s (an index can serve only those)."""
        if self.sort and all(key.table == table for key in self.sort):
            return self.sort
        return []


def parse(query: str) -> QueryShape | None:
    """The shape of one statement, or ``None`` for text that is not a single parsable statement."""
    try:
        statements = parse_sql(query)
    except ParseError:
        return None
    if len(statements) != 1:
        return None
    return _shape(statements[0].stmt)


def resolve(shape: QueryShape, columns_of: Mapping[str, set[str]]) -> QueryShape:
    """Give unqualified columns their table: the one table of the statement that has the column."""

    def table_of(table: str | None, column: str) -> str | None:
        if table is not None:
            return table
        owners = [name for name in shape.table_names if column in columns_of.get(name, set())]
        return owners[0] if len(owners) == 1 else None

    shape.predicates = [
        Predicate(table_of(item.table, item.column), item.column, item.kind) for item in shape.predicates
    ]
    shape.sort = [SortKey(table_of(item.table, item.column), item.column, item.descending) for item in shape.sort]
    for use in shape.params.values():
        if use.role == "column" and use.column is not None:
            use.table = table_of(use.table, use.column)
    return shape


def _shape(statement: Any) -> QueryShape:
    if isinstance(statement, ast.SelectStmt):
        shape = QueryShape("select")
        _select(statement, shape)
    elif isinstance(statement, ast.UpdateStmt | ast.DeleteStmt):
        relation: Any = statement.relation
        shape = QueryShape("update" if isinstance(statement, ast.UpdateStmt) else "delete")
        _range_var(relation, shape)
        shape.written = str(relation.relname)
        _where(statement.whereClause, shape)
    elif isinstance(statement, ast.InsertStmt):
        inserted: Any = statement.relation
        shape = QueryShape("insert", written=str(inserted.relname))
        _range_var(inserted, shape)
    else:
        shape = QueryShape("other")
    return shape


def _select(statement: Any, shape: QueryShape) -> None:
    if statement.op is not None and statement.larg is not None:  # UNION / INTERSECT / EXCEPT
        for side in (statement.larg, statement.rarg):
            if side is not None:
                _select(side, shape)
    for item in statement.fromClause or ():
        _from_item(item, shape)
    _where(statement.whereClause, shape)
    for sort in statement.sortClause or ():
        reference = _column(sort.node, shape)
        if reference is not None:
            shape.sort.append(SortKey(*reference, descending=sort.sortby_dir == SortByDir.SORTBY_DESC))
    _bind_limit(statement.limitCount, "limit", shape)
    _bind_limit(statement.limitOffset, "offset", shape)


def _from_item(item: Any, shape: QueryShape) -> None:
    if isinstance(item, ast.RangeVar):
        _range_var(item, shape)
    elif isinstance(item, ast.JoinExpr):
        _from_item(item.larg, shape)
        _from_item(item.rarg, shape)
        _where(item.quals, shape)
    elif isinstance(item, ast.RangeSubselect) and isinstance(item.subquery, ast.SelectStmt):
        _select(item.subquery, shape)


def _range_var(item: Any, shape: QueryShape) -> None:
    name = str(item.relname)
    shape.tables[str(item.alias.aliasname) if item.alias else name] = name
    shape.tables.setdefault(name, name)


def _where(node: Any, shape: QueryShape) -> None:
    for condition in _conjuncts(node):
        if isinstance(condition, ast.A_Expr):
            _comparison(condition, shape)
        elif isinstance(condition, ast.NullTest) and condition.nulltesttype == NullTestType.IS_NULL:
            reference = _column(condition.arg, shape)
            if reference is not None:
                shape.predicates.append(Predicate(*reference, kind="null"))
        elif isinstance(condition, ast.SubLink) and isinstance(condition.subselect, ast.SelectStmt):
            _select(condition.subselect, shape)


def _conjuncts(node: Any) -> Iterator[Any]:
    if node is None:
        return
    if isinstance(node, ast.BoolExpr) and node.boolop == BoolExprType.AND_EXPR:
        for argument in node.args or ():
            yield from _conjuncts(argument)
    else:
        yield node


def _comparison(expression: Any, shape: QueryShape) -> None:
    operator = expression.name[-1].sval if expression.name else ""
    left, right = _column(expression.lexpr, shape), _column(_single(expression.rexpr), shape)
    if expression.kind == A_Expr_Kind.AEXPR_OP and left is not None and right is not None:
        if operator == "=" and left[0] != right[0]:
            shape.predicates += [Predicate(*left, kind="join"), Predicate(*right, kind="join")]
        return
    if left is None and right is not None and expression.kind == A_Expr_Kind.AEXPR_OP:
        left, operator, values = right, _REVERSED.get(operator, ""), [expression.lexpr]
    else:
        values = list(expression.rexpr) if isinstance(expression.rexpr, tuple) else [expression.rexpr]
    if left is None:
        return
    kind = _predicate_kind(expression.kind, operator, values)
    if kind is None:
        return
    shape.predicates.append(Predicate(*left, kind=kind))
    for value in values:
        if isinstance(value, ast.ParamRef) and value.number is not None:
            shape.params[value.number] = ParamUse("column", *left)


def _predicate_kind(kind: Any, operator: str, values: list[Any]) -> Kind | None:
    if kind == A_Expr_Kind.AEXPR_IN and operator == "=":
        return "eq"
    if kind == A_Expr_Kind.AEXPR_BETWEEN:
        return "range"
    if kind == A_Expr_Kind.AEXPR_OP and operator == "=":
        return "eq"
    if kind in (A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_LIKE) and operator in _RANGE_OPERATORS:
        if operator == "~~" and not _prefix_pattern(values):
            return None
        return "range"
    return None


def _prefix_pattern(values: list[Any]) -> bool:
    """``LIKE 'abc%'`` can use a btree (with the C collation or text_pattern_ops); a parameter might be one."""
    [value] = values or [None]
    if isinstance(value, ast.ParamRef):
        return True
    constant = getattr(value, "val", None)
    text = getattr(constant, "sval", None)
    return isinstance(text, str) and bool(text) and text[0] not in "%_"


def _single(value: Any) -> Any:
    return value if not isinstance(value, tuple) else None


def _column(node: Any, shape: QueryShape) -> tuple[str | None, str] | None:
    if isinstance(node, ast.TypeCast):
        node = node.arg
    if not isinstance(node, ast.ColumnRef):
        return None
    names = [str(part.sval) for part in node.fields or () if isinstance(part, ast.String)]
    if len(names) == 1:
        tables = set(shape.tables.values())
        return (next(iter(tables)) if len(tables) == 1 else None), names[0]
    if len(names) >= 2:
        return shape.tables.get(names[-2], names[-2]), names[-1]
    return None


def _bind_limit(node: Any, role: Literal["limit", "offset"], shape: QueryShape) -> None:
    if isinstance(node, ast.ParamRef) and node.number is not None:
        shape.params[node.number] = ParamUse(role)
