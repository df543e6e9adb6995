"""A lighter parse of S3 listings' ``Contents`` (ListObjectsV2, ListObjects), for planning at scale.

Why: planning a job of 10,000 partitions lists ten pages of 1,000 keys, and botocore's generic
rest-xml parser walks every ``<Contents>`` entry through the model (a dict of its child nodes, a
handler looked up per member, a regex per tag): about 16-20 us a key on this machine, most of the
coordinator's own time in planning. :class:`ListingParser` is botocore's own ``RestXMLParser``
with that one list handled by a table made once per page from the same model: a child's tag
gives its member and its converter at once. Everything else stays botocore's: the call, signing,
retries, error responses, the page's other members, and the decoding of ``EncodingType=url`` keys
(an ``after-call`` handler). An entry the table does not cover (a nested structure such as
``Owner`` with ``FetchOwner``, a repeated scalar) goes to botocore's generic code whole, so the
result is always what botocore gives; tests/foundation/test_s3listing.py compares the two on
moto's real pages.

Installed by :func:`services.s3store.s3_client` (the session's ``response_parser_factory``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from xml.etree.ElementTree import Element

from botocore.model import ListShape, Shape, StructureShape
from botocore.parsers import ResponseParser, ResponseParserFactory, RestXMLParser
from botocore.utils import is_json_value_header

#: The list shapes parsed by the table: the ``Contents`` of ListObjects and ListObjectsV2.
FAST_LISTS = frozenset({"ObjectList"})
_SCALAR, _REPEATED = 0, 1
#: A member as the table knows it: its name, whether it is a scalar or a flattened list of them,
#: and what turns a child's text into its value (None: botocore's generic code parses the entry).
Column = tuple[str, int, Callable[[str], Any] | None]


class ListingParser(RestXMLParser):
    """botocore's rest-xml parser, with :data:`FAST_LISTS` parsed through a table."""

    def __init__(self, timestamp_parser: Callable[[str], Any] | None = None,
                 blob_parser: Callable[[str], Any] | None = None) -> None:
        super().__init__(timestamp_parser, blob_parser)
        self._names: dict[str, str] = {}  # an element's tag -> its name without the namespace

    def _handle_list(self, shape: ListShape, node: Any) -> Any:
        if shape.name not in FAST_LISTS or not shape.serialization.get("flattened"):
            return super()._handle_list(shape, node)
        member = shape.member
        try:
            table = self._table(member)
            if table is None:
                return super()._handle_list(shape, node)
            return [self._entry(member, table, item) for item in (node if isinstance(node, list) else [node])]
        except (AttributeError, TypeError):  # botocore's internals moved (boto3 is not pinned): its own way
            return super()._handle_list(shape, node)

    def _entry(self, shape: StructureShape, table: dict[str, Column], item: Element) -> dict[str, Any]:
        """One ``<Contents>`` entry, as ``_handle_structure`` would parse it."""
        parsed: dict[str, Any] = {}
        names = self._names
        for child in item:
            tag = child.tag
            name = names.get(tag)
            if name is None:
                name = names[tag] = self._node_tag(child)
            column = table.get(name)
            if column is None:
                continue  # botocore skips what the model does not name
            member, kind, convert = column
            if convert is None or (kind == _SCALAR and member in parsed):
                return self._handle_structure(shape, item)  # nested, or a scalar twice: botocore's way
            text = child.text
            value = convert(text if text is not None else "")
            if kind == _SCALAR:
                parsed[member] = value
            elif member in parsed:
                parsed[member].append(value)
            else:
                parsed[member] = [value]
        return parsed

    def _table(self, shape: Shape) -> dict[str, Column] | None:
        """XML name -> column, for a structure botocore would parse member by member; None for a
        structure it treats otherwise (an error, a union, attributes)."""
        if not isinstance(shape, StructureShape) or shape.metadata.get("exception") or shape.is_tagged_union:
            return None
        table: dict[str, Column] = {}
        for name, member in shape.members.items():
            if member.serialization.get("xmlAttribute"):
                return None
            if member.serialization.get("location") in self.KNOWN_LOCATIONS or member.serialization.get("eventheader"):
                continue
            flat_list = isinstance(member, ListShape) and member.serialization.get("flattened")
            scalar = member.member if flat_list else member
            table[self._member_key_name(member, name)] = (name, _REPEATED if flat_list else _SCALAR,
                                                          self._converter(scalar))
        return table

    def _converter(self, shape: Shape) -> Callable[[str], Any] | None:
        """The text-to-value function botocore's handler for ``shape`` amounts to, for scalars."""
        kind = shape.type_name
        if kind in ("string", "character") and not is_json_value_header(shape):
            return str
        if kind in ("integer", "long"):
            return int
        if kind in ("float", "double"):
            return float
        if kind == "boolean":
            return "true".__eq__
        if kind == "timestamp":
            return self._timestamp_parser  # type: ignore[no-any-return]
        return None


class ListingParserFactory(ResponseParserFactory):
    """botocore's factory, making :class:`ListingParser` for rest-xml (S3) with the same defaults."""

    def create_parser(self, protocol_name: str) -> ResponseParser:
        if protocol_name == "rest-xml":
            return ListingParser(**self._defaults)
        return super().create_parser(protocol_name)  # type: ignore[no-any-return]
