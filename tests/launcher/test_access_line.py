"""The launcher's one line on access control."""

from __future__ import annotations

from launcher.__main__ import access_line


def test_without_api_keys_access_control_is_said_to_be_off() -> None:
    assert access_line({}).startswith("access control: off (API_KEYS unset)")
    assert access_line({"API_KEYS": " , "}).startswith("access control: off")


def test_with_api_keys_it_is_on_and_names_no_key() -> None:
    line = access_line({"API_KEYS": "secret-one,sha256:" + "a" * 64})
    assert line.startswith("access control: on, 2 API key(s)") and "secret-one" not in line


def test_admin_keys_alone_turn_it_on_as_for_the_gateway() -> None:
    assert access_line({"ADMIN_API_KEYS": "admin-one"}).startswith("access control: on, 1 API key(s)")
