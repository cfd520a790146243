"""Prompt builders, rendered through the tokenizer's own chat template.

Student/evaluation prompt (as in the released COPSD evaluation code):
    user:      "{problem}\n\n{instruction in the target language}"
    assistant: opened with "<think>\n" + "By request, I will start thinking in <language>."
               (in the language, nothing after it) when the template has thinking tokens.
Without thinking (`thinking: false`) a Qwen3-style template renders its own non-thinking turn
(`enable_thinking=False`, an empty think block). Templates without `<think>` get the plain
assistant turn; tokenizers without any chat template get "{user text}\n\n" (documented fallback).
The teacher's prompt is added with the methods (issue 3).
"""

from __future__ import annotations

from copsd.languages import get_language


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
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        )
        if thinking:
            text += "<think>\n" + get_language(language).thinking.strip()
        return text
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def student_prompt(tokenizer, problem: str, language: str, *, thinking: bool = True) -> str:
    return render_chat(tokenizer, user_message(problem, language), thinking=thinking, language=language)
