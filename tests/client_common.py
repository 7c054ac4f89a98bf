"""What the client-library tests share: the task, its schema and the tool."""

from __future__ import annotations

from pydantic import BaseModel

PROMPT = "Extract the person as JSON: Meet Sofia, a 29-year-old from Lyon."
WEATHER_Q = "What is the weather in Paris?"


class Person(BaseModel):
    name: str
    age: int
    city: str


def get_weather(city: str) -> str:
    """Current weather in a city.

    Args:
        city: the city's name
    """
    return f"18 C and clear in {city}"
