"""The persona chat: conversation logic (unit-tested without a browser) and its ipywidgets front end."""
import html
import json
from pathlib import Path

from .inference import BASE, persona, stream_reply, with_system_prompt

MAX_INPUT_CHARS = 1000
# Sampling that reads well in a chat (notebook 05 compares it with greedy and the rest); greedy stays for evaluation.
CHAT_SAMPLING = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1}


class PersonaChat:
    """One base model, several persona adapters, a running conversation per persona."""

    def __init__(self, model, tokenizer, system_prompts: dict[str, str | None], max_input_chars=MAX_INPUT_CHARS,
                 feedback_file=None, **sampling):
        self.model, self.tokenizer = model, tokenizer
        self.system_prompts = {BASE: None, **system_prompts}
        self.personas = list(self.system_prompts)
        self.histories = {name: [] for name in self.personas}
        self.current = self.personas[-1]
        self.max_input_chars = max_input_chars
        self.sampling = {"max_new_tokens": 120, **CHAT_SAMPLING} | sampling
        self.feedback_file = Path(feedback_file) if feedback_file else None

    def switch(self, name: str):
        if name not in self.histories:
            raise KeyError(f"unknown persona {name!r}; choose one of {', '.join(self.personas)}")
        self.current = name

    def clear(self):
        self.histories[self.current] = []

    def prepare_input(self, text: str) -> tuple[str | None, str | None]:
        """The message to send (or None) and a notice for the user (or None)."""
        text = (text or "").strip()
        if not text:
            return None, "Type a message first."
        if len(text) > self.max_input_chars:
            return text[: self.max_input_chars], f"Your message was cut to its first {self.max_input_chars} characters."
        return text, None

    def stream(self, text: str, name: str | None = None):
        """Yield the reply piece by piece; the turn is recorded for the persona it was sent to, even if the chat
        switches persona meanwhile."""
        name = name or self.current
        history = self.histories[name]
        messages = with_system_prompt(history + [{"role": "user", "content": text}], self.system_prompts[name])
        pieces = []
        with persona(self.model, name):
            for piece in stream_reply(self.model, self.tokenizer, messages, **self.sampling):
                pieces.append(piece)
                yield piece
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(pieces).strip()}]

    def send(self, text: str, name: str | None = None, on_piece=None) -> str:
        message, notice = self.prepare_input(text)
        if message is None:
            return notice
        reply = ""
        for piece in self.stream(message, name):
            reply += piece
            if on_piece:
                on_piece(piece)
        return reply.strip()

    def rate(self, good: bool) -> dict | None:
        """Thumbs up or down for the current persona's last reply, appended to `feedback_file` as one JSON line:
        `{"persona", "prompt", "reply", "good"}`. Notebook 09 turns a prompt's good and bad replies into pairs."""
        history = self.histories[self.current]
        if len(history) < 2 or not self.feedback_file:
            return None
        prompt = with_system_prompt(history[:-1], self.system_prompts[self.current])
        record = {"persona": self.current, "prompt": prompt, "reply": history[-1]["content"], "good": good}
        self.feedback_file.parent.mkdir(parents=True, exist_ok=True)
        with self.feedback_file.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return record

    def retry(self) -> str | None:
        """Drop the current persona's last reply and return the message it answered, to ask again (a new sample)."""
        history = self.histories[self.current]
        if len(history) < 2:
            return None
        asked = history[-2]["content"]
        del history[-2:]
        return asked

    def side_by_side(self, text: str) -> dict[str, str]:
        """The base model's and the current persona's replies to the same message."""
        return {name: self.send(text, name) for name in dict.fromkeys([BASE, self.current])}


def render_history(history: list[dict], name: str, pending: str = "", notice: str | None = None) -> str:
    rows = [f"<div style='margin:4px 0'><b>{'you' if m['role'] == 'user' else html.escape(name)}:</b> "
            f"{html.escape(m['content'])}</div>" for m in history]
    if pending:
        rows.append(f"<div style='margin:4px 0'><b>{html.escape(name)}:</b> {html.escape(pending)}▌</div>")
    if notice:
        rows.append(f"<div style='color:#a15c00'>{html.escape(notice)}</div>")
    return "<div class='persona-chat-log'>" + "".join(rows) + "</div>"


def chat_widget(chat: PersonaChat):
    """Dropdown, text box, Send / Clear, and a side-by-side mode; replies stream into the page as they generate."""
    import ipywidgets as w

    choose = w.Dropdown(options=chat.personas, value=chat.current, description="Persona")
    side = w.Checkbox(value=False, description="side by side with base")
    box = w.Text(placeholder="Say something ...", layout=w.Layout(width="70%"))
    send, clear = w.Button(description="Send", button_style="primary"), w.Button(description="Clear")
    good, bad, again = (w.Button(description=d, layout=w.Layout(width="auto"))
                        for d in ("👍 good reply", "👎 bad reply", "try again"))
    log = w.HTML(render_history([], chat.current))
    base_log = w.HTML("")

    def refresh(notice=None, pending="", base_pending=None):
        log.value = render_history(chat.histories[chat.current], chat.current, pending, notice)
        base_log.value = (render_history(chat.histories[BASE], BASE, base_pending or "")
                          if side.value and chat.current != BASE else "")

    def on_send(_=None, message=None):
        message, notice = (message, None) if message else chat.prepare_input(box.value)
        if message is None:
            return refresh(notice)
        box.value, send.disabled = "", True
        try:
            names = [BASE, chat.current] if side.value and chat.current != BASE else [chat.current]
            for name in names:
                pending = ""
                for piece in chat.stream(message, name):
                    pending += piece
                    in_base_column = name == BASE and len(names) > 1
                    refresh(notice, **{"base_pending" if in_base_column else "pending": pending})
            refresh(notice)
        finally:
            send.disabled = False

    def on_switch(change):
        chat.switch(change["new"])
        refresh()

    def on_clear(_):
        chat.clear()
        if side.value:
            chat.histories[BASE] = []
        refresh()

    def on_rate(is_good):
        saved = chat.rate(is_good)
        refresh(f"saved as a {'good' if is_good else 'bad'} reply in {chat.feedback_file}" if saved else
                "nothing to rate yet" if chat.feedback_file else "no feedback_file given to PersonaChat")

    def on_again(_):
        asked = chat.retry()
        if asked:
            on_send(message=asked)

    send.on_click(on_send)
    clear.on_click(on_clear)
    good.on_click(lambda _: on_rate(True))
    bad.on_click(lambda _: on_rate(False))
    again.on_click(on_again)
    choose.observe(on_switch, names="value")
    side.observe(lambda _: refresh(), names="value")
    rows = [w.HBox([choose, side]), w.HBox([log, base_log]), w.HBox([box, send, clear])]
    if chat.feedback_file:
        rows.append(w.HBox([good, bad, again]))
    panel = w.VBox(rows)
    panel.controls = {"persona": choose, "side": side, "text": box, "send": send, "clear": clear, "log": log,
                      "base_log": base_log, "good": good, "bad": bad, "again": again}
    return panel
