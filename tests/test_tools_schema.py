"""@tool: the JSON schema a model is shown, from type hints and docstrings; the validator."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional, TypedDict

import pytest

from agent.interfaces import ToolCall
from agent.tools import SchemaError, ToolContext, tool
from agent.toolschema import schema_for, validate


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass
class Address:
    """A postal address.

    Attributes:
        street: Street and number.
        city: The city.
    """

    street: str
    city: str
    zip_code: str | None = None


@dataclass
class Order:
    items: list[str]
    ship_to: Address
    notes: list[str] = field(default_factory=list)


class Filters(TypedDict, total=False):
    max_price: float
    vegan: bool


@pytest.mark.parametrize(
    ("hint", "schema"),
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (Any, {}),
        (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
        (Literal[1, 2], {"type": "integer", "enum": [1, 2]}),
        (Literal["x", 1], {"enum": ["x", 1]}),
        (Unit, {"type": "string", "enum": ["celsius", "fahrenheit"]}),
        (Priority, {"type": "integer", "enum": [1, 2]}),
        (Optional[int], {"type": ["integer", "null"]}),  # noqa: UP045 - the spelling under test
        (str | None, {"type": ["string", "null"]}),
        (Literal["a"] | None, {"type": ["string", "null"], "enum": ["a", None]}),
        (int | str, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (tuple[str, ...], {"type": "array", "items": {"type": "string"}}),
        (list[list[bool]], {"type": "array", "items": {"type": "array",
                                                      "items": {"type": "boolean"}}}),
        (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
        (Annotated[str, "An ISO date."], {"description": "An ISO date.", "type": "string"}),
    ],
)
def test_schema_of_each_supported_type(hint: Any, schema: dict[str, Any]) -> None:
    assert schema_for(hint) == schema


def test_nested_dataclass_and_typeddict_schemas() -> None:
    assert schema_for(Order) == {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"type": "string"}},
            "ship_to": {
                "description": "A postal address.",
                "type": "object",
                "properties": {
                    "street": {"description": "Street and number.", "type": "string"},
                    "city": {"description": "The city.", "type": "string"},
                    "zip_code": {"type": ["string", "null"]},
                },
                "required": ["street", "city"],
                "additionalProperties": False,
            },
            "notes": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["items", "ship_to"],
        "additionalProperties": False,
    }
    assert schema_for(Filters) == {
        "type": "object",
        "properties": {"max_price": {"type": "number"}, "vegan": {"type": "boolean"}},
        "required": [],
        "additionalProperties": False,
    }


def test_google_docstring_gives_the_description_and_each_parameter_text() -> None:
    @tool
    async def book_table(
        restaurant: str, people: int, when: str = "tonight", unit: Unit = Unit.CELSIUS
    ) -> str:
        """Book a table at a restaurant.

        Only restaurants in the city are known.

        Args:
            restaurant: The restaurant's name,
                as the user said it.
            people (int): How many people.
            when: A time, e.g. "8 pm".

        Returns:
            A confirmation line.
        """
        return "ok"

    schema = book_table.schema
    assert schema.name == "book_table"
    assert schema.description == (
        "Book a table at a restaurant.\n\nOnly restaurants in the city are known."
    )
    assert schema.parameters == {
        "type": "object",
        "properties": {
            "restaurant": {
                "description": "The restaurant's name, as the user said it.",
                "type": "string",
            },
            "people": {"description": "How many people.", "type": "integer"},
            "when": {"description": 'A time, e.g. "8 pm".', "type": "string",
                     "default": "tonight"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        },
        "required": ["restaurant", "people"],
        "additionalProperties": False,
    }


def test_sphinx_params_name_override_and_injected_context() -> None:
    @tool(name="lookup-order", description="Find an order.", timeout=2.5,
          cancel_on_interruption=False)
    def find(context: ToolContext, order_id: str) -> str:
        """Ignored summary.

        :param order_id: The order number.
        """
        return order_id

    assert find.name == "lookup-order"
    assert find.timeout == 2.5 and not find.cancel_on_interruption and not find.is_async
    assert find.description == "Find an order."
    assert find.parameters["properties"] == {
        "order_id": {"description": "The order number.", "type": "string"}
    }
    assert find.parameters["required"] == ["order_id"], "the context is not the model's to fill"
    assert find(ToolContext(ToolCall("c", "lookup-order", "{}")), "A7") == "A7", "still callable"


def test_a_signature_a_model_cannot_fill_is_refused_at_decoration() -> None:
    with pytest.raises(SchemaError, match=r"'city'.*no type annotation"):

        @tool
        def untyped(city):  # type: ignore[no-untyped-def]
            return city

    with pytest.raises(SchemaError, match=r"\*args"):

        @tool
        def star(*cities: str) -> None: ...

    with pytest.raises(SchemaError, match="type bytes is not supported"):

        @tool
        def raw(data: bytes) -> None: ...

    with pytest.raises(SchemaError, match="say what the list holds"):

        @tool
        def bare(items: list) -> None: ...  # type: ignore[type-arg]

    with pytest.raises(SchemaError, match="tool name"):
        tool(name="has space")(lambda: None)


ORDER = schema_for(Order)


@pytest.mark.parametrize(
    ("value", "errors"),
    [
        ({"items": ["tea"], "ship_to": {"street": "1 Main St", "city": "Oslo"}}, []),
        ({"items": [], "ship_to": {"street": "s", "city": "c", "zip_code": None}}, []),
        ({"ship_to": {"street": "s", "city": "c"}}, ["items: missing"]),
        ({"items": "tea", "ship_to": {"street": "s", "city": "c"}},
         ["items: expected a list, got 'tea'"]),
        ({"items": ["tea", 3], "ship_to": {"street": "s", "city": 7}},
         ["items[1]: expected a string, got 3", "ship_to.city: expected a string, got 7"]),
        ({"items": [], "ship_to": {"street": "s", "city": "c"}, "gift": True},
         ["gift: unexpected (known: items, ship_to, notes)"]),
        ([1], ["arguments: expected an object, got [1]"]),
    ],
)
def test_validator_names_what_does_not_fit(value: Any, errors: list[str]) -> None:
    assert validate(ORDER, value) == errors


def test_validator_keeps_json_types_apart() -> None:
    assert validate({"type": "integer"}, True) == ["arguments: expected an integer, got true"]
    assert validate({"type": "integer"}, 2.0) == []
    assert validate({"type": "integer"}, 2.5) == ["arguments: expected an integer, got 2.5"]
    assert validate({"type": "number"}, 3) == []
    assert validate({"enum": [1, "x"]}, True) == ["arguments: true is not one of 1, 'x'"]
    assert validate({"anyOf": [{"type": "integer"}, {"type": "null"}]}, None) == []
    assert validate({"anyOf": [{"type": "integer"}, {"type": "null"}]}, "1") == [
        "arguments: '1' matches none of the allowed shapes"
    ]
