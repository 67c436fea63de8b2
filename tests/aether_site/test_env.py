"""Strict environment parsing: junk raises naming the variable; secrets may come from NAME_FILE."""

import pytest

from aether_site.env import Env, SettingsError


def test_booleans():
    env = Env({"A": "yes", "B": "0", "C": " On ", "D": ""})
    assert env.bool("A", False) is True
    assert env.bool("B", True) is False
    assert env.bool("C", False) is True
    assert env.bool("D", True) is True
    assert env.bool("MISSING", False) is False


@pytest.mark.parametrize(
    ("method", "value", "message"),
    [
        ("bool", "maybe", "expected a boolean"),
        ("int", "12x", "expected a whole number"),
        ("int", "-1", "at least 0"),
        ("list", "a,,b", "empty item"),
        ("choice", "staging", "expected one of"),
    ],
)
def test_junk_values_raise_naming_the_variable(method, value, message):
    env = Env({"SETTING": value})
    call = {
        "bool": lambda: env.bool("SETTING", False),
        "int": lambda: env.int("SETTING", 1, minimum=0),
        "list": lambda: env.list("SETTING"),
        "choice": lambda: env.choice("SETTING", "a", ("a", "b")),
    }[method]
    with pytest.raises(SettingsError, match=message) as excinfo:
        call()
    assert str(excinfo.value).startswith("SETTING=")


def test_secret_from_file(tmp_path):
    secret = tmp_path / "key"
    secret.write_text("s3cret\n")
    assert Env({"SECRET_KEY_FILE": str(secret)}).str("SECRET_KEY") == "s3cret"


def test_missing_secret_file_names_the_variable(tmp_path):
    with pytest.raises(SettingsError, match=r"^SECRET_KEY_FILE=.*nope: file not found"):
        Env({"SECRET_KEY_FILE": str(tmp_path / "nope")}).str("SECRET_KEY")


def test_empty_file_variable_is_an_error():
    with pytest.raises(SettingsError, match="set but empty"):
        Env({"SECRET_KEY_FILE": " "}).str("SECRET_KEY")


def test_secret_file_must_be_utf8(tmp_path):
    secret = tmp_path / "key"
    secret.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SettingsError, match="not UTF-8"):
        Env({"SECRET_KEY_FILE": str(secret)}).str("SECRET_KEY")


def test_value_and_file_together_are_ambiguous(tmp_path):
    secret = tmp_path / "key"
    secret.write_text("a")
    with pytest.raises(SettingsError, match="both set"):
        Env({"SECRET_KEY": "b", "SECRET_KEY_FILE": str(secret)}).str("SECRET_KEY")


def test_lists_and_defaults():
    env = Env({"HOSTS": "a.example.com, b.example.com"})
    assert env.list("HOSTS") == ["a.example.com", "b.example.com"]
    assert env.list("NONE", ["x"]) == ["x"]
    assert env.str("NONE", "d") == "d"
