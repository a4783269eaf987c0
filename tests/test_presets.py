"""``--models-preset``: llama-server's preset files read into ModelSpecs (every key spelling,
precedence, bad files, the conf.d rule), then one real router serving a preset."""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx
import openai
import pytest

from router.child_options import effective_child_options
from router.models import presets
from router.models.confd import scan_conf_dir
from router.models.hf_cache import scan_cache
from router.models.presets import PRESET_SOURCE, catalog_with_presets, read_presets
from router.spec import ModelSpec
from tests.fake_hub import write_cached_model
from tests.processes import running_router
from tests.test_cli import refusal
from tests.test_router_e2e import client, statuses, wait_until
from tests.tiny_models import write_tiny_llama


def preset(folder: Path, text: str) -> Path:
    path = folder / "models.ini"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "w.gguf"
    path.write_bytes(b"GGUF")
    return path


def test_a_model_section_overrides_the_global_one_and_the_command_line_overrides_both(
    tmp_path: Path, weights: Path
) -> None:
    path = preset(
        tmp_path,
        f"""
        version = 1
        ; every model
        [*]
        c = 512
        LLAMA_ARG_N_GPU_LAYERS = 8
        [small]
        model = {weights}
        ctx-size = 256   # a comment after the value
        [plain]
        m = {weights}
        """,
    )
    scan = read_presets(path, {})
    assert scan.problems == {}
    small, plain = scan.specs["small"], scan.specs["plain"]
    assert small.args == {"ctx_size": 256, "n_gpu_layers": 8}
    assert plain.args == {"ctx_size": 512, "n_gpu_layers": 8}
    assert small.path == weights and small.source == PRESET_SOURCE
    assert small.source_file == path
    assert effective_child_options(small, {}, {"ctx_size": 1024})["ctx_size"] == 1024


def test_every_key_spelling_and_the_preset_only_keys(tmp_path: Path, weights: Path) -> None:
    path = preset(
        tmp_path,
        f"""
        [m]
        model = {weights}
        ngl = 3
        LLAMA_ARG_CTX_SIZE = 300
        no-mmap = true
        flash-attn = on
        jinja = true
        alias = m1, m2
        port = 9999
        load-on-startup = true
        stop-timeout = 5
        """,
    )
    spec = read_presets(path, {}).specs["m"]
    assert dict(spec.args) == {
        "n_gpu_layers": 3,
        "ctx_size": 300,
        "mmap": False,
        "flash_attn": "on",
    }
    assert spec.aliases == ("m1", "m2")
    assert spec.load_on_startup is True and spec.stop_timeout_s == 5.0


def test_a_relative_model_path_is_read_from_the_working_folder(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "presets"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    spec = read_presets(preset(elsewhere, "[m]\nmodel = ./w.gguf\n"), {}).specs["m"]
    assert spec.path == weights


def test_a_section_tag_is_written_as_llama_cpp_writes_it(tmp_path: Path, weights: Path) -> None:
    scan = read_presets(preset(tmp_path, f"[org/repo:q4_k_m]\nmodel = {weights}\n"), {})
    assert list(scan.specs) == ["org/repo:Q4_K_M"]


def test_bad_sections_are_problems_with_the_line_and_the_nearest_key(
    tmp_path: Path, weights: Path
) -> None:
    path = preset(
        tmp_path,
        f"""
        [typo]
        model = {weights}
        ctx-sise = 5
        [bad-value]
        model = {weights}
        c = many
        [no-file]
        c = 5
        [good]
        model = {weights}
        """,
    )
    scan = read_presets(path, {})
    assert list(scan.specs) == ["good"]
    typo = scan.problems["typo"]
    assert "'ctx-sise'" in typo.message and "did you mean 'ctx-size'" in typo.message
    assert typo.line == 4 and typo.source == PRESET_SOURCE
    assert "'c' = 'many'" in scan.problems["bad-value"].message
    assert "set 'model'" in scan.problems["no-file"].message


def test_a_file_that_does_not_parse_makes_its_sections_invalid(tmp_path: Path) -> None:
    path = preset(tmp_path, "[a]\nc = 1\nthis is not ini\n[b]\n")
    scan = read_presets(path, {})
    assert scan.specs == {} and list(scan.problems) == ["a"]
    assert scan.problems["a"].line == 3


def test_a_bad_global_key_makes_every_model_invalid(tmp_path: Path, weights: Path) -> None:
    scan = read_presets(preset(tmp_path, f"[*]\nbogus = 1\n[m]\nmodel = {weights}\n"), {})
    assert scan.specs == {} and "[*]: unknown key 'bogus'" in scan.problems["m"].message


def test_a_section_configures_the_folder_model_of_its_name_and_globals_reach_the_others(
    tmp_path: Path, weights: Path
) -> None:
    found = {
        "w": ModelSpec(id="w", path=weights),
        "other": ModelSpec(id="other", path=weights),
    }
    path = preset(tmp_path, "[*]\nc = 512\nload-on-startup = 1\n[w]\nc = 128\n")
    specs, problems = catalog_with_presets(found, path, scan_conf_dir(None))
    assert problems == {}
    assert specs["w"].path == weights and specs["w"].source == PRESET_SOURCE
    assert specs["w"].args == {"ctx_size": 128}
    assert specs["other"].args == {"ctx_size": 512} and specs["other"].source == "models_dir"
    assert specs["other"].load_on_startup is True


def test_a_conf_d_file_wins_over_the_preset_section_of_its_id(
    tmp_path: Path, weights: Path
) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "m.toml").write_text(f'model = "{weights}"\n[args]\nctx_size = 64\n')
    path = preset(tmp_path, f"[m]\nmodel = {weights}\nc = 512\n[bad]\nc = x\n")
    (conf / "bad.toml").write_text(f'model = "{weights}"\n')
    specs, problems = catalog_with_presets({}, path, scan_conf_dir(conf))
    assert problems == {}
    assert specs["m"].args == {"ctx_size": 64} and specs["m"].source == "conf.d"
    assert specs["bad"].source == "conf.d"


def test_hf_repo_names_a_model_of_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    snapshot = write_cached_model(cache, "org/tiny", {"tiny-Q8_0.gguf": b"GGUF"})
    monkeypatch.setenv("LLAMA_CACHE", str(cache))
    path = preset(tmp_path, "[a]\nhf-repo = org/tiny\n[b]\nhf = org/missing:Q4_K_M\n")
    scan = read_presets(path, {})
    assert scan.specs["a"].path == snapshot / "tiny-Q8_0.gguf"
    assert "not in the model cache" in scan.problems["b"].message


@pytest.mark.parametrize(
    "text",
    [
        "[d]\nhf-repo = org/main\nspec-draft-hf = org/draft\ndedup-cache-models = 1\n",
        "[*]\ndedup-cache-models = true\n[d]\nhf = org/main\nhfd = org/draft\n",
    ],
    ids=["section", "globals"],
)
def test_dedup_cache_models_unlists_the_cache_entries_of_the_preset_and_keeps_them_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    cache = tmp_path / "cache"
    for repo in ("org/main", "org/draft", "org/other"):
        write_cached_model(cache, repo, {f"{repo[4:]}-F32.gguf": b"GGUF"})
    monkeypatch.setenv("LLAMA_CACHE", str(cache))
    found = scan_cache(cache)
    monkeypatch.setattr(presets, "_warned_drafts", set())
    path = preset(tmp_path, text)
    specs, problems = catalog_with_presets(found, path, scan_conf_dir(tmp_path / "none"))
    assert problems == {}
    listed = {model_id for model_id, spec in specs.items() if spec.is_listed}
    assert listed == {"d", "org/other:F32"}
    assert {"org/main:F32", "org/draft:F32"} <= specs.keys()  # hidden, still served by id
    assert specs["d"].args == {}  # the draft never reaches a child
    assert caplog.text.count("the draft model is ignored") == 1
    catalog_with_presets(found, path, scan_conf_dir(tmp_path / "none"))  # a reload
    assert caplog.text.count("the draft model is ignored") == 1  # once per model
    without = preset(tmp_path, "[d]\nhf-repo = org/main\nspec-draft-hf = org/draft\n")
    specs, _ = catalog_with_presets(found, without, scan_conf_dir(tmp_path / "none"))
    assert all(spec.is_listed for spec in specs.values())


@pytest.mark.parametrize("variable", ["", "LLAMA_ARG_MODELS_PRESET", "LLAMA_ROUTER_MODELS_PRESET"])
def test_a_missing_preset_file_is_refused_at_start_from_the_flag_or_a_variable(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "no.ini")
    if variable:
        monkeypatch.setenv(variable, missing)
    # A missing --models-dir too: were the preset not checked, that refusal (not a served
    # router) would end the test.
    flags = ("--models-dir", "missing", *(() if variable else ("--models-preset", missing)))
    error = refusal(capsys, *flags)
    assert f"--models-preset {missing} is not a file" in error


def test_a_preset_is_served_by_a_real_router(tmp_path: Path) -> None:
    """[*] c = 512, a section overriding it, --threads on the command line over the preset's
    t, load-on-startup, an invalid section listed, and a reload that adds a model."""
    for seed, name in enumerate(("a", "b")):
        write_tiny_llama(tmp_path / f"{name}.gguf", seed=seed, context_length=4096)
    (tmp_path / "empty").mkdir()
    text = """
        version = 1
        [*]
        c = 512
        t = 2
        [a]
        model = ./a.gguf
        c = 256
        load-on-startup = true
        [b]
        model = ./b.gguf
        [broken]
        model = ./b.gguf
        ctx-sise = 5
        """
    path = preset(tmp_path, text)
    with running_router(tmp_path / "empty", "--models-preset", str(path), cwd=tmp_path) as router:
        wait_until(lambda: statuses(router).get("a") == "loaded", "a loads at start-up")
        entries = {e["id"]: e for e in httpx.get(f"{router.base_url}/models").json()["data"]}
        assert entries["a"]["source"] == entries["b"]["source"] == "preset"
        assert entries["a"]["settings"]["args"]["ctx_size"] == 256
        assert entries["b"]["settings"]["args"]["ctx_size"] == 512
        assert entries["a"]["settings"]["args"]["threads"] == 1  # the command line's
        assert " ".join(entries["a"]["status"]["args"]).count("--ctx-size 256") == 1
        assert entries["b"]["status"]["value"] == "unloaded"
        broken = entries["broken"]
        assert broken["status"]["value"] == "invalid" and broken["source"] == "preset"
        assert "did you mean 'ctx-size'" in broken["status"]["error"]
        answer = client(router).completions.create(model="a", prompt="hi", max_tokens=3)
        assert answer.model == "a" and answer.choices[0].text is not None
        with pytest.raises(openai.InternalServerError, match="ctx-size"):  # as conf.d
            client(router).completions.create(model="broken", prompt="hi", max_tokens=3)
        path.write_text(textwrap.dedent(text) + "[c]\nmodel = ./a.gguf\n")
        assert httpx.post(f"{router.base_url}/models/reload", json={}).status_code == 200
        assert "c" in statuses(router)


def test_a_deduplicated_cache_model_is_unlisted_and_served_by_a_real_router(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dedup-cache-models: the cache's entry is out of GET /models and /api/tags, and a
    request naming it is served; the other cache model stays listed."""
    weights = tmp_path / "w.gguf"
    write_tiny_llama(weights, seed=0, context_length=512)
    cache = tmp_path / "cache"
    for repo in ("org/main", "org/other"):
        write_cached_model(cache, repo, {f"{repo[4:]}-F32.gguf": weights})
    monkeypatch.setenv("LLAMA_CACHE", str(cache))
    path = preset(tmp_path, "[d]\nhf-repo = org/main\ndedup-cache-models = 1\n")
    with running_router(None, "--models-preset", str(path), cwd=tmp_path) as router:
        ids = {e["id"] for e in httpx.get(f"{router.base_url}/models").json()["data"]}
        assert ids == {"d", "org/other:F32"}
        tags = httpx.get(f"{router.base_url}/api/tags").json()["models"]
        assert {t["name"] for t in tags} == {"d", "org/other:F32"}
        answer = client(router).completions.create(model="org/main:F32", prompt="hi", max_tokens=2)
        assert answer.model == "org/main:F32"
