from __future__ import annotations

import pytest

from service.settings import Settings, SettingsError, build_parser, load_settings


def test_defaults():
    settings = load_settings([], environ={})
    assert settings == Settings()
    assert settings.host == "127.0.0.1" and settings.api_keys == ()


def test_env_and_flags_share_names_and_flags_win():
    env = {"PORT": "9000", "MAX_BATCH_TOKENS": "4096", "API_KEYS": "a, b", "LOG_INPUTS": "true", "HOST": "0.0.0.0"}
    settings = load_settings(["--port", "9100"], environ=env)
    assert settings.port == 9100
    assert settings.max_batch_tokens == 4096
    assert settings.api_keys == ("a", "b")
    assert settings.log_inputs is True
    assert settings.host == "0.0.0.0"
    assert settings.grpc_port == 0 and load_settings([], environ={"GRPC_PORT": "8001"}).grpc_port == 8001


def test_repository_settings_come_from_flags_and_env():
    env = {"REPOSITORY": "/models", "MODEL_CONTROL": "poll", "POLL_INTERVAL": "2.5", "DEFAULT_MODEL": "intent"}
    settings = load_settings(["--version-policy", "all"], environ=env)
    assert (settings.repository, settings.model_control, settings.poll_interval) == ("/models", "poll", 2.5)
    assert (settings.default_model, settings.version_policy) == ("intent", "all")
    assert (Settings().repository, Settings().model_control, Settings().version_policy) == ("", "none", "latest")


def test_client_limits_come_from_flags_and_env():
    env = {"HEADER_TIMEOUT": "2.5", "MAX_HEADER_BYTES": "8192", "MAX_CONNECTIONS": "64"}
    settings = load_settings(["--body-timeout", "3"], environ=env)
    assert (settings.header_timeout, settings.body_timeout) == (2.5, 3.0)
    assert (settings.max_header_bytes, settings.max_connections) == (8192, 64)


@pytest.mark.parametrize(
    "argv, env, message",
    [
        pytest.param(["--port", "eighty"], {}, "--port has an invalid value 'eighty'", id="port-type"),
        pytest.param(
            [],
            {"REQUIRE_SIGNATURE": "true"},
            "--require-signature needs --trusted-keys: the public keys whose signatures to accept",
            id="signature-without-keys",
        ),
        pytest.param(
            ["--bundle-digest", "abc"], {}, "--bundle-digest takes sha256:<64 lowercase hex>, got 'abc'", id="digest"
        ),
        pytest.param(
            ["--repository-digests", "digests.txt"], {}, "--repository-digests needs --repository", id="digests-file"
        ),
        pytest.param([], {"MAX_WAIT_MS": "soon"}, "MAX_WAIT_MS has an invalid value 'soon'", id="env-type"),
        pytest.param(["--max-inputs", "0"], {}, "--max-inputs must be at least 1, got 0", id="zero"),
        pytest.param(["--drain-timeout", "-1"], {}, "--drain-timeout must not be negative, got -1.0", id="negative"),
        pytest.param(["--port", "70000"], {}, "--port must be at most 65535, got 70000", id="port-range"),
        pytest.param(
            [], {"GRPC_PORT": "-1"}, "--grpc-port must be between 0 (off) and 65535, got -1", id="grpc-port-range"
        ),
        pytest.param(
            ["--grpc-port", "8000"], {}, "--grpc-port must differ from --port, both are 8000", id="grpc-port-clash"
        ),
        pytest.param([], {"LOG_INPUTS": "maybe"}, "LOG_INPUTS has an invalid value 'maybe'", id="bool"),
        pytest.param(
            ["--log-level", "loud"], {}, "--log-level must be debug, info, warning or error, got 'loud'", id="level"
        ),
        pytest.param(
            ["--header-timeout", "0"], {}, "--header-timeout must be greater than 0, got 0.0", id="header-timeout"
        ),
        pytest.param([], {"BODY_TIMEOUT": "-2"}, "--body-timeout must be greater than 0, got -2.0", id="body-timeout"),
        pytest.param([], {"MAX_HEADER_BYTES": "0"}, "--max-header-bytes must be at least 1, got 0", id="header-bytes"),
        pytest.param(["--max-connections", "0"], {}, "--max-connections must be at least 1, got 0", id="connections"),
        pytest.param(
            [],
            {"MODEL_CONTROL": "auto"},
            "--model-control must be none, poll or explicit, got 'auto'",
            id="model-control",
        ),
        pytest.param(["--model-control", "poll"], {}, "--model-control poll needs --repository", id="poll-no-repo"),
        pytest.param(
            ["--repository", "r", "--poll-interval", "0"],
            {},
            "--poll-interval must be greater than 0, got 0.0",
            id="poll-interval",
        ),
        pytest.param(
            [],
            {"VERSION_POLICY": "newest"},
            "--version-policy must be latest or all, got 'newest'",
            id="version-policy",
        ),
        pytest.param(
            ["--shadow", "intent:2"],
            {},
            "--shadow needs --repository: a shadow is another version of a repository's model",
            id="shadow-no-repo",
        ),
        pytest.param(
            ["--repository", "r"],
            {"SHADOW": "intent"},
            "--shadow takes MODEL:VERSION entries, as intent:3; got 'intent'",
            id="shadow-entry",
        ),
        pytest.param(
            ["--repository", "r", "--shadow", "intent:2,intent:3"],
            {},
            "--shadow names a model twice: a model has at most one shadow version",
            id="shadow-twice",
        ),
        pytest.param(
            [],
            {"SHADOW_FRACTION": "1.5"},
            "--shadow-fraction must be greater than 0 and at most 1, got 1.5",
            id="shadow-fraction",
        ),
    ],
)
def test_errors_name_the_setting(argv, env, message):
    with pytest.raises(SettingsError) as raised:
        load_settings(argv, environ=env)
    assert str(raised.value) == message


def test_help_states_trade_offs():
    text = build_parser().format_help()
    assert "MAX_BATCH_TOKENS" in text
    text = " ".join(text.split())
    assert "add that much latency when idle" in text
    for flag in ("HEADER_TIMEOUT", "BODY_TIMEOUT", "MAX_HEADER_BYTES", "MAX_CONNECTIONS"):
        assert flag in text
    assert "A stalled upload delays a SIGTERM drain by at most this long" in text


@pytest.mark.parametrize(
    "cpu_max, expected",
    [
        pytest.param("max 100000\n", None, id="no-quota"),
        pytest.param("100000 100000\n", 1, id="one-cpu"),
        pytest.param("150000 100000\n", 2, id="fractional-rounds-up"),
        pytest.param("garbage", None, id="unreadable"),
    ],
)
def test_available_cores_honours_the_cgroup_quota(tmp_path, cpu_max, expected):
    import os

    from service.core.cpu import available_cores

    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(path) == (min(affinity, expected) if expected else affinity)
    assert available_cores(tmp_path / "missing") == affinity


def test_an_empty_env_var_means_not_set():
    # The image sets GRPC_PORT to "" when built without gRPC.
    settings = load_settings([], {"GRPC_PORT": "", "MAX_INPUTS": "", "API_KEYS": ""})
    assert (settings.grpc_port, settings.max_inputs, settings.api_keys) == (0, 64, ())


def test_model_dir_is_a_bundle_or_a_repository(tmp_path):
    from service.settings import load_settings

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    settings = load_settings(["--model-dir", str(bundle)], environ={})
    assert (settings.bundle, settings.repository) == (str(bundle), "")
    settings = load_settings([], environ={"MODEL_DIR": str(tmp_path), "REPOSITORY": "elsewhere"})
    assert settings.repository == str(tmp_path)


def test_high_priority_keys_must_be_api_keys():
    from service.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=r"^--high-priority-keys names 1 key\(s\) that are not in --api-keys"):
        load_settings(["--api-keys", "a,b", "--high-priority-keys", "a,c"], environ={})
    assert load_settings(["--api-keys", "a,b", "--high-priority-keys", "a"], environ={}).high_priority_keys == ("a",)


def test_the_gate_floor_and_reference_bounds_are_checked():
    from service.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=r"^--gate-int8-min-agreement must be between 0 and 1, got 1.5$"):
        load_settings(["--gate-int8-min-agreement", "1.5"], environ={})
    with pytest.raises(SettingsError, match=r"^--max-reference-rows must be at least 1, got 0$"):
        load_settings([], environ={"MAX_REFERENCE_ROWS": "0"})
    with pytest.raises(SettingsError, match=r"^--gate-fp32-max-logit-diff must not be negative, got -1.0$"):
        load_settings(["--gate-fp32-max-logit-diff", "-1"], environ={})
