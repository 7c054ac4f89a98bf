"""Adapters as trainers leave them, served: a PEFT or MLX-LM checkpoint folder given to
``--adapter`` or to vLLM's ``POST /v1/load_lora_adapter`` is converted against the served base on
first load (checked like ``edge-lora convert --base``) and cached by content; and the chat-template
variables of a call (``chat_template_kwargs``) default per server and per adapter.

The reference for each served answer is the in-process runtime with the adapter converted by
``convert()`` (itself checked against PEFT in test_convert_parity.py): greedy answers must be
equal, token for token."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
from adapters import make_mlx_adapter, make_peft_adapter
from serving import serve

from edge_lora import InvalidRequestError, Runtime
from edge_lora.errors import MissingDependencyError
from edge_lora.formats.gguf_file import read_gguf
from edge_lora.cli.checkpoints import ConvertedAdapters
from edge_lora_convert import convert

#: a template that shows its variables: the prompt says which defaults a call got
TEMPLATE = ("{% if greeting is defined %}[{{ greeting }}]{% endif %}{% if tone is defined %}<{{ tone }}>{% endif %}"
            "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
ASK = [{"role": "user", "content": "the cat sat"}]
GREEDY = {"temperature": 0, "max_tokens": 8}
LORA = dict(r=8, lora_alpha=16, target_modules="all-linear")


@pytest.fixture(scope="module")
def world(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server-adapters")
    t = tiny("qwen3")
    adir = tmp / "adapters"
    adir.mkdir()
    make_peft_adapter(t.model, tmp / "start", LORA, seed=11)  # given to --adapter as a folder
    make_peft_adapter(t.model, adir / "peft-sql", LORA, seed=12)
    make_mlx_adapter(t.model, adir / "mlx-tone", ["self_attn.q_proj", "mlp.down_proj"], rank=4, scale=2.0,
                     num_layers=2, seed=13)
    ggufs = {}
    for name, src in (("start", tmp / "start"), ("sql", adir / "peft-sql"), ("tone", adir / "mlx-tone")):
        ggufs[name] = tmp / f"{name}.gguf"
        convert(src, base=t.base_path, out=ggufs[name])
    (tmp / "template.jinja").write_text(TEMPLATE)
    cache = tmp / "cache"
    args = [str(t.base_path), "--adapter-dir", str(adir), "--convert-cache", str(cache), "--n-ctx", "512",
            "--adapter", f"start={tmp / 'start'}", "--chat-template-file", str(tmp / "template.jinja"),
            "--chat-template-kwargs", '{"greeting": "all"}', "--chat-template-kwargs", 'start={"tone": "warm"}']
    ref = Runtime(t.base_path, n_ctx=512, chat_template=TEMPLATE, template_kwargs={"greeting": "all"})
    for name, path in ggufs.items():
        ref.load_adapter(name, path)
    with serve(args) as (url, proc):
        yield {"url": url, "proc": proc, "ref": ref, "adir": adir, "cache": cache, "tiny": t, "tmp": tmp}
    ref.close()


def post(world, path: str, body: dict) -> httpx.Response:
    return httpx.post(world["url"] + path, json=body, timeout=120)


def chat(world, model: str, **extra) -> dict:
    r = post(world, "/v1/chat/completions", {"model": model, "messages": ASK, **GREEDY, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def reference(world, adapters: dict, **kwargs) -> tuple[str, int]:
    """The in-process answer and prompt length of the same call."""
    ref = world["ref"]
    answer = ref.chat(ASK, adapters, **GREEDY, **({"template_kwargs": kwargs} if kwargs else {})).text
    return answer, len(ref.chat_tokens(ASK, adapters, template_kwargs=kwargs or None))


def test_a_checkpoint_folder_given_at_start_is_converted_and_gets_its_template_defaults(world):
    """``--adapter start=FOLDER`` is served as its converted GGUF, and its
    ``--chat-template-kwargs start=...`` default reaches the template (a longer prompt)."""
    got = chat(world, "start")
    ref = world["ref"]
    ref.unload_adapter("start")
    ref.load_adapter("start", world["tmp"] / "start.gguf", template_kwargs={"tone": "warm"})
    want, n_prompt = reference(world, {"start": None})
    assert got["choices"][0]["message"]["content"] == want
    assert got["usage"]["prompt_tokens"] == n_prompt
    assert "<warm>" in ref.detokenize(ref.chat_tokens(ASK, {"start": None}))


@pytest.mark.parametrize("name, folder", [("sql", "peft-sql"), ("tone", "mlx-tone")])
def test_a_checkpoint_folder_is_converted_on_load_then_found_in_the_cache(world, name, folder):
    """vLLM's body with ``lora_path`` naming a PEFT or an MLX-LM folder: converted against the
    base, served like the GGUF ``convert()`` writes; unloaded and loaded again, the cached file
    is used (same path, ``cached``)."""
    r = post(world, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": folder})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["cached"] is False and Path(first["lora_path"]).parent == world["cache"]
    assert [Path(p).name for p in first["converted_from"]][0] == "adapter_config.json"
    try:
        want, _ = reference(world, {name: 1.0})
        assert chat(world, name)["choices"][0]["message"]["content"] == want
    finally:
        assert post(world, "/v1/unload_lora_adapter", {"lora_name": name}).status_code == 200
    r = post(world, "/v1/load_lora_adapter", {"lora_name": name + "2", "lora_path": folder})
    assert r.status_code == 200, r.text
    again = r.json()
    assert again["cached"] is True and again["lora_path"] == first["lora_path"]
    assert post(world, "/v1/unload_lora_adapter", {"lora_name": name + "2"}).status_code == 200


def test_a_changed_checkpoint_is_converted_again(world, tmp_path):
    """The cache is keyed by content: new weights in the same folder give a new conversion."""
    folder = world["adir"] / "retrained"
    make_peft_adapter(world["tiny"].model, folder, LORA, seed=21)
    first = post(world, "/v1/load_lora_adapter", {"lora_name": "re", "lora_path": "retrained"}).json()
    assert post(world, "/v1/unload_lora_adapter", {"lora_name": "re"}).status_code == 200
    make_peft_adapter(world["tiny"].model, folder, LORA, seed=22)
    second = post(world, "/v1/load_lora_adapter", {"lora_name": "re", "lora_path": "retrained"})
    assert second.status_code == 200, second.text
    assert second.json()["cached"] is False and second.json()["lora_path"] != first["lora_path"]
    convert(folder, base=world["tiny"].base_path, out=tmp_path / "re.gguf")
    world["ref"].load_adapter("re", tmp_path / "re.gguf")
    try:
        assert chat(world, "re")["choices"][0]["message"]["content"] == reference(world, {"re": 1.0})[0]
    finally:
        world["ref"].unload_adapter("re")
        post(world, "/v1/unload_lora_adapter", {"lora_name": "re"})


def test_a_checkpoint_that_cannot_be_converted_is_a_400_listing_its_problems(world):
    """Checked like ``convert --base``: an adapter for another model (wrong shapes) is refused with
    each problem named, nothing loaded and nothing cached."""
    bad = world["adir"] / "other-model"
    make_peft_adapter(world["tiny"].model, bad, LORA, seed=31)
    from safetensors.numpy import load_file, save_file

    weights = bad / "adapter_model.safetensors"
    tensors = {k: (v[:, :-2] if "lora_A" in k else v) for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    before = sorted(world["cache"].iterdir())
    r = post(world, "/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": "other-model"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "lora_path" and "cannot convert" in err["message"]
    assert err["message"].count("\n  - ") >= 2  # every mismatched tensor, not just the first
    assert sorted(world["cache"].iterdir()) == before
    assert "bad" not in [m["id"] for m in httpx.get(world["url"] + "/v1/models").json()["data"]]


def test_template_kwargs_per_adapter_from_the_load_body_and_the_call_wins(world):
    """``chat_template_kwargs`` in the load body is that adapter's default, over the server's;
    the request's own win over both."""
    r = post(world, "/v1/load_lora_adapter", {"lora_name": "sql", "lora_path": "peft-sql",
                                              "chat_template_kwargs": {"greeting": "sql"}})
    assert r.status_code == 200, r.text
    ref = world["ref"]
    ref.unload_adapter("sql")
    ref.load_adapter("sql", world["tmp"] / "sql.gguf", template_kwargs={"greeting": "sql"})
    try:
        assert "[sql]" in ref.detokenize(ref.chat_tokens(ASK, {"sql": 1.0}))
        got = chat(world, "sql")
        want, n = reference(world, {"sql": None})
        assert got["choices"][0]["message"]["content"] == want and got["usage"]["prompt_tokens"] == n
        got = chat(world, "sql", chat_template_kwargs={"greeting": "mine"})
        want, n = reference(world, {"sql": None}, greeting="mine")
        assert got["choices"][0]["message"]["content"] == want and got["usage"]["prompt_tokens"] == n
        assert "[mine]" in ref.detokenize(ref.chat_tokens(ASK, {"sql": 1.0}, template_kwargs={"greeting": "mine"}))
    finally:
        post(world, "/v1/unload_lora_adapter", {"lora_name": "sql"})
        ref.unload_adapter("sql")
        ref.load_adapter("sql", world["tmp"] / "sql.gguf")


def test_adapters_whose_defaults_disagree_need_the_call_to_say(world):
    ref = world["ref"]
    ref.load_adapter("a", world["tmp"] / "sql.gguf", template_kwargs={"tone": "dry"})
    ref.load_adapter("b", world["tmp"] / "tone.gguf", template_kwargs={"tone": "wet"})
    try:
        with pytest.raises(InvalidRequestError) as err:
            ref.chat(ASK, {"a": 1.0, "b": 0.5}, **GREEDY)
        assert "tone: a sets 'dry', b sets 'wet'" in str(err.value) and err.value.param == "template_kwargs"
        ref.chat(ASK, {"a": 1.0, "b": 0.5}, template_kwargs={"tone": "mild"}, **GREEDY)
        assert "<dry>" in ref.detokenize(ref.chat_tokens(ASK, {"a": 1.0, "b": 0.0}))  # b off: a's alone
        with pytest.raises(InvalidRequestError):
            ref.load_adapter("c", world["tmp"] / "sql.gguf", template_kwargs={"messages": []})
    finally:
        ref.unload_adapter("a")
        ref.unload_adapter("b")


def test_a_bin_checkpoint_without_torch_names_the_extra(world, tmp_path, monkeypatch):
    """A ``.bin`` checkpoint needs torch to read: without it, the error names
    ``edge-lora[convert]`` (the server answers it as a 400 on ``lora_path``)."""
    folder = tmp_path / "bin"
    make_peft_adapter(world["tiny"].model, folder, LORA, seed=41, storage="bin")
    monkeypatch.setitem(sys.modules, "torch", None)
    conv = ConvertedAdapters(tmp_path / "cache", read_gguf(world["tiny"].base_path))
    with pytest.raises(MissingDependencyError) as err:
        conv.gguf_for(folder)
    assert "pip install 'edge-lora[convert]'" in str(err.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_the_server_never_imports_the_converter_until_a_checkpoint_is_loaded():
    """The runtime and the server install and run without the converter."""
    code = ("import sys, edge_lora.server.app, edge_lora.server.lora_admin, edge_lora.cli.serve; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('edge_lora_convert') "
            "or m in ('torch', 'transformers', 'peft'))))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
