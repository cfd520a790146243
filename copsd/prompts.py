"""Prompt builders, rendered through the tokenizer's own chat template.

Student/evaluation prompt (as in the released COPSD evaluation code):
    user:      "{problem}\n\n{instruction in the target language}"
    assistant: opened with "<think>\n" + "By request, I will start thinking in <language>."
               (in the language, nothing after it) when the template has thinking tokens.
Without thinking (`thinking: false`) a Qwen3-style template renders its own non-thinking turn
(`enable_thinking=False`, an empty think block). Templates without `<think>` get the plain
assistant turn; tokenizers without any chat template get "{user text}\n\n" (documented fallback).

Training prompts follow the released COPSD training collator:
    student:  "{Problem label}: {problem}\n\n{instruction}"  (+ thinking prefix when student_thinking)
    teacher:  "{Problem label}: {problem}"
              "\n\n{English-problem label}: {English problem}"                (include_problem_en)
              "\n\n{Solution label}:\n{begin marker}\n{English solution}\n{end marker}"  (include_reference_solution_en)
              "\n\n{transition}\n{final instruction}"  (just "\n\n{final instruction}" without the solution)
              always with the thinking prefix.
The teacher's prompt differs from the student's exactly by the privileged English context.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from copsd.data.languages import get_language
from copsd.errors import CopsdError


class TemplateTimeout(CopsdError):
    """A chat template that did not render within the time limit (the job fails with this)."""


def template_time_limit_s() -> float:
    """`COPSD_TEMPLATE_TIMEOUT_S` (default 10): a real template renders one prompt in milliseconds;
    a hostile one (nested loops over `range`) would hang the job forever."""
    try:
        return max(0.01, float(os.environ.get("COPSD_TEMPLATE_TIMEOUT_S", "10")))
    except ValueError:
        raise CopsdError("COPSD_TEMPLATE_TIMEOUT_S must be a number of seconds, e.g. 10") from None


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise TemplateTimeout in the rendering code after `seconds` (SIGALRM: it interrupts pure
    Python such as jinja, which a watchdog thread could not). Jobs render on their process's main
    thread; elsewhere (a signal needs the main thread) there is no limit."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(_signum, _frame):
        raise TemplateTimeout(
            f"the model's chat template took more than {seconds:g} s to render one prompt (a template that "
            "loops without end?); fix the chat_template in the model's tokenizer files, use another model, or "
            "raise COPSD_TEMPLATE_TIMEOUT_S"
        )

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _apply_template(tokenizer, messages: list[dict], **kwargs) -> str:
    with _time_limit(template_time_limit_s()):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


def has_thinking_tokens(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "<think>" in tokenizer.get_vocab() and ("think" in template)


def user_message(problem: str, language: str) -> str:
    return f"{problem.strip()}\n\n{get_language(language).instruction}"


def render_chat(tokenizer, user_text: str, *, thinking: bool, language: str) -> str:
    """The full prompt string (no generation yet) for one user turn."""
    if not getattr(tokenizer, "chat_template", None):
        return f"{user_text}\n\n"
    messages = [{"role": "user", "content": user_text}]
    if has_thinking_tokens(tokenizer):
        text = _apply_template(tokenizer, messages, enable_thinking=thinking)
        if thinking:
            text += "<think>\n" + get_language(language).thinking.strip()
        return text
    return _apply_template(tokenizer, messages)


def student_prompt(tokenizer, problem: str, language: str, *, thinking: bool = True) -> str:
    return render_chat(tokenizer, user_message(problem, language), thinking=thinking, language=language)


def training_student_prompt(tokenizer, problem: str, language: str, *, thinking: bool = True) -> str:
    lab = get_language(language)
    user = f"{lab.teacher.problem}: {problem.strip()}\n\n{lab.instruction}"
    return render_chat(tokenizer, user, thinking=thinking, language=language)


def teacher_user_message(
    problem: str,
    language: str,
    *,
    problem_en: str | None,
    solution_en: str | None,
    include_problem_en: bool = True,
    include_reference_solution_en: bool = True,
) -> str:
    lab = get_language(language)
    t = lab.teacher
    parts = [f"{t.problem}: {problem.strip()}"]
    if include_problem_en and problem_en:
        parts.append(f"{t.problem_en}: {problem_en.strip()}")
    if include_reference_solution_en and solution_en:
        parts.append(f"{t.solution_en}:\n{t.ref_begin}\n{solution_en.strip()}\n{t.ref_end}")
        parts.append(f"{t.transition}\n{t.final_instruction}")
    else:
        parts.append(t.final_instruction)
    return "\n\n".join(parts)


def teacher_prompt(
    tokenizer,
    problem: str,
    language: str,
    *,
    problem_en: str | None,
    solution_en: str | None,
    include_problem_en: bool = True,
    include_reference_solution_en: bool = True,
) -> str:
    user = teacher_user_message(
        problem,
        language,
        problem_en=problem_en,
        solution_en=solution_en,
        include_problem_en=include_problem_en,
        include_reference_solution_en=include_reference_solution_en,
    )
    return render_chat(tokenizer, user, thinking=True, language=language)
