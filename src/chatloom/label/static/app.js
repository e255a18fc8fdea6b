// chatloom label: the reply editor's "Draft with model" button and the live token preview (debounced).
(function () {
  "use strict";
  const csrf = document.body.dataset.csrf;

  async function postJSON(url, body) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body || {}),
    });
    const data = await response.json().catch(() => ({error: "HTTP " + response.status}));
    if (!response.ok) throw new Error(data.error || ("HTTP " + response.status));
    return data;
  }

  const editor = document.querySelector("textarea[data-preview]");
  const tokensBox = document.getElementById("preview-tokens");
  const counts = document.getElementById("preview-counts");
  let timer = null, sequence = 0;

  function showTokens(data) {
    tokensBox.textContent = "";
    for (const [text, supervised, message] of data.tokens) {
      const span = document.createElement("span");
      span.className = "tok " + (message >= 0 ? "m" + (message % 6) : "mx") + (supervised ? " sup" : "");
      span.textContent = text.replace(/\n/g, "↵\n").replace(/\t/g, "⇥");
      span.title = (supervised ? "supervised" : "not supervised") + (message >= 0 ? " · message " + message : " · template text");
      tokensBox.appendChild(span);
    }
    const mine = data.per_message.length ? data.per_message[data.per_message.length - 1] : null;
    counts.textContent = data.num_tokens + " tokens, " + data.num_supervised + " supervised" +
      (mine ? " · this message: " + mine.tokens + " tokens" : "") + " · " + data.protocol;
    counts.dataset.tokens = data.num_tokens;
    counts.dataset.supervised = data.num_supervised;
  }

  async function refresh() {
    const mine = ++sequence;
    try {
      const data = await postJSON("/api/preview", {task_id: Number(editor.dataset.preview), text: editor.value});
      if (mine === sequence) showTokens(data);
    } catch (e) {
      if (mine === sequence) counts.textContent = "preview unavailable: " + e.message;
    }
  }

  if (editor && tokensBox) {
    editor.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refresh, 300); });
    refresh();
  }

  const draftButton = document.getElementById("draft-button");
  if (draftButton && editor) {
    draftButton.addEventListener("click", async () => {
      const status = document.getElementById("draft-status");
      if (editor.value.trim() && !window.confirm("Replace the text in the editor with a model draft?")) return;
      draftButton.disabled = true;
      status.textContent = "asking the model…";
      try {
        const data = await postJSON("/api/tasks/" + draftButton.dataset.task + "/draft", {});
        editor.value = data.text;
        status.textContent = "draft from " + data.model + ": edit it, then submit";
        status.dataset.model = data.model;
        refresh();
      } catch (e) {
        status.textContent = "draft failed: " + e.message;
      } finally {
        draftButton.disabled = false;
      }
    });
  }
})();
