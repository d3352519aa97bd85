"""The search-agent tag protocol (paper Fig. 6): <think>, <search>, <result>, <answer> with \\boxed{}.

This module holds the constants and the *formatting* side (what a well-formed turn and observation look like);
the parser and the prompt builder live beside it. The synthetic world's scripted expert writes its
demonstrations with exactly these functions, so SFT data and RL rollouts share one format.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from at2po.agent.env import ParsedTurn, TurnKind

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TURN_STOP_STRINGS: tuple[str, ...] = (SEARCH_CLOSE,)  # a turn also stops at end of sequence

INSTRUCTION = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you "
    "get new information. After reasoning, if you find you lack some knowledge, you can call a search engine "
    "by <search> query </search>, and it will return the top searched results between <result> and </result>. "
    "You can search as many times as you want. If you find no further external knowledge needed, you can "
    "directly provide the answer inside <answer> and </answer>, with the final answer in \\boxed{}, "
    "for example <answer> The answer is \\boxed{Beijing} </answer>."
)


def format_search_turn(think: str, query: str) -> str:
    """A tool-call turn: reasoning, then one search call (generation stops at </search>)."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}\n{SEARCH_OPEN}{query}{SEARCH_CLOSE}"


def format_answer_turn(think: str, answer: str) -> str:
    """A final turn: reasoning, then the answer in \\boxed{} inside <answer> (the caller appends eos)."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}\n{ANSWER_OPEN}The answer is \\boxed{{{answer}}}{ANSWER_CLOSE}"


def format_passages(passages: Sequence[tuple[str, str]]) -> str:
    """Search-R1 style passage list from (title, text) pairs."""
    return "".join(f"Doc {i}(Title: {title}) {text}\n" for i, (title, text) in enumerate(passages, 1))


def format_observation(body: str) -> str:
    """Wrap an observation body in <result> tags, as inserted after a </search>."""
    return f"\n\n{RESULT_OPEN}\n{body.strip()}\n{RESULT_CLOSE}\n\n"


# ---------------------------------------------------------------------------------------------------------------
# Parsing: one generated turn -> tool call / final answer / classified malformed output.
# ---------------------------------------------------------------------------------------------------------------

_TAG_NAMES: tuple[str, ...] = ("think", "search", "answer", "result")
_TAG_RE = re.compile(r"<(/?)(think|search|answer|result)>")

# Short corrective messages (the body of the observation inserted after an INVALID turn). Each names the tag
# and the fix, so a policy can learn from the observation alone.
ERROR_MESSAGES: dict[str, str] = {
    "self_result": "Invalid turn: you wrote <result> yourself. Only the search engine writes results; "
    "call it with <search> query </search>.",
    "nested_tags": "Invalid turn: tags are nested (found <{inner}> inside <{outer}>). Close each tag before "
    "opening the next.",
    "stray_close": "Invalid turn: found </{tag}> without a matching <{tag}>.",
    "unclosed_tag": "Invalid turn: <{tag}> was opened but never closed with </{tag}>.",
    "multiple_calls": "Invalid turn: {n} search calls in one turn. Make exactly one call per turn: "
    "<search> query </search>.",
    "multiple_answers": "Invalid turn: {n} answers in one turn. Give exactly one <answer> ... </answer>.",
    "search_and_answer": "Invalid turn: a search call and an answer in the same turn. Either search or answer.",
    "empty_query": "Invalid turn: the search query is empty. Put a query between <search> and </search>.",
    "no_action": "Invalid turn: no action found. To search, write <search> query </search>; to finish, write "
    "<answer> ... \\boxed{{answer}} </answer>.",
}


def error_message(error: str, **fields: object) -> str:
    """The corrective text for an error code (see ``ERROR_MESSAGES``), with its placeholders filled."""
    return ERROR_MESSAGES[error].format(**fields)


def find_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text``, matching nested braces; None if absent or unbalanced.

    ``\\boxed{f(\\{x\\})}`` style content with inner braces is returned whole (brace depth is counted).
    """
    start = text.rfind("\\boxed")
    while start != -1:
        i = start + len("\\boxed")
        while i < len(text) and text[i].isspace():
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                c = text[j]
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
            return None  # unbalanced braces: the answer is malformed
        start = text.rfind("\\boxed", 0, start)
    return None


def strip_results(text: str) -> str:
    """Remove ``<result>...</result>`` blocks (environment observations) from a response, so that answer
    extraction and format checks only look at what the policy wrote."""
    return re.sub(r"<result>.*?</result>", " ", text, flags=re.DOTALL)


def _invalid(error: str, **fields: object) -> ParsedTurn:
    return ParsedTurn(
        kind=TurnKind.INVALID, error=error, message=format_observation(error_message(error, **fields))
    )


def parse_turn(text: str, *, no_action: str = "retry") -> ParsedTurn:
    """Classify one generated turn (the text the policy produced since the last observation). Never raises.

    Rules, in order: a ``<result>`` tag written by the model -> ``self_result``; an opening tag while another
    tag is open -> ``nested_tags``; a closing tag with no opener -> ``stray_close``; a tag left open at the end
    (e.g. cut off by the turn's token limit) -> ``unclosed_tag``; more than one ``<search>`` -> ``multiple_calls``;
    more than one ``<answer>`` -> ``multiple_answers``; both -> ``search_and_answer``; a blank query ->
    ``empty_query``. One search -> TOOL_CALL with the stripped query. One answer -> ANSWER with its ``\\boxed{}``
    content (None when missing; the reward then scores a format failure). Neither -> ``no_action``: INVALID with a
    corrective observation when ``no_action == "retry"`` (Search-R1's behaviour), NO_ACTION (the trajectory
    ends) when ``no_action == "end"``. INVALID turns carry ``message``: the full observation text to insert.
    """
    try:
        return _parse_turn(text, no_action)
    except Exception as exc:  # defensive: a parser bug must not kill a rollout of thousands of turns
        message = format_observation("Invalid turn: it could not be parsed.")
        return ParsedTurn(kind=TurnKind.INVALID, error=f"parse_error: {exc!r}", message=message)


def _parse_turn(text: str, no_action: str) -> ParsedTurn:
    tags = [(m.group(1) == "/", m.group(2), m.start(), m.end()) for m in _TAG_RE.finditer(text)]
    if any(name == "result" for _, name, _, _ in tags):
        return _invalid("self_result")
    open_tag: tuple[str, int] | None = None  # (name, end offset of the opening tag)
    spans: dict[str, list[str]] = {"think": [], "search": [], "answer": []}
    for closing, name, start, end in tags:
        if not closing:
            if open_tag is not None:
                return _invalid("nested_tags", inner=name, outer=open_tag[0])
            open_tag = (name, end)
        else:
            if open_tag is None:
                return _invalid("stray_close", tag=name)
            if open_tag[0] != name:  # </x> while <y> is open: x was opened inside y or never opened
                return _invalid("nested_tags", inner=name, outer=open_tag[0])
            spans[name].append(text[open_tag[1] : start])
            open_tag = None
    if open_tag is not None:
        return _invalid("unclosed_tag", tag=open_tag[0])
    searches, answers = spans["search"], spans["answer"]
    if searches and answers:
        return _invalid("search_and_answer")
    if len(searches) > 1:
        return _invalid("multiple_calls", n=len(searches))
    if len(answers) > 1:
        return _invalid("multiple_answers", n=len(answers))
    if searches:
        query = " ".join(searches[0].split())
        if not query:
            return _invalid("empty_query")
        return ParsedTurn(kind=TurnKind.TOOL_CALL, query=query)
    if answers:
        return ParsedTurn(kind=TurnKind.ANSWER, answer=find_boxed(answers[0]))
    if no_action == "end":
        return ParsedTurn(kind=TurnKind.NO_ACTION, error="no_action")
    return _invalid("no_action")
