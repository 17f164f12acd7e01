/*
 * A small Markdown renderer that builds DOM nodes, never HTML strings.
 *
 * Safety rule: message text only ever reaches the page through `textContent` / text nodes, and the only
 * attributes set from message text are link `href`s, which must be http(s) or mailto URLs. No innerHTML,
 * so no tag or attribute in a message can run script, whatever the input.
 *
 * Supported: fenced code blocks, headings, paragraphs (single newlines become line breaks), bullet and
 * numbered lists (nested by indentation), block quotes, horizontal rules, inline code, **bold**, *italic*,
 * ~~strike~~, [links](https://...) and bare http(s) URLs. Anything else shows as the literal text.
 *
 * Usage: `element.replaceChildren(AriaMarkdown.render(text))`.
 */
(function () {
  "use strict";

  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
  const QUOTE = /^ {0,3}> ?(.*)$/;
  const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const SAFE_URL = /^(https?:\/\/|mailto:)/i;

  // One pass over the text finds the earliest inline construct; the text before it becomes a text node.
  const INLINE = new RegExp(
    [
      "(`+)([^`][\\s\\S]*?)\\1(?!`)", // 1,2 code span
      "\\[([^\\]\\n]+)\\]\\(\\s*((?:[^()\\s]|\\([^()\\s]*\\))+)\\s*\\)", // 3,4 link (one level of parens)
      "\\*\\*([^\\s*](?:[\\s\\S]*?[^\\s*])?)\\*\\*", // 5 bold
      "~~([^\\s~](?:[\\s\\S]*?[^\\s~])?)~~", // 6 strike
      "\\*([^\\s*](?:[^*\\n]*?[^\\s*])?)\\*", // 7 italic
      "(https?:\\/\\/[^\\s<>]*[^\\s<>.,;:!?'\")\\]])", // 8 bare URL
    ].join("|"),
    "g",
  );

  function el(tag, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  function appendText(parent, text, breakLines) {
    if (!breakLines) {
      parent.appendChild(document.createTextNode(text));
      return;
    }
    const parts = text.split("\n");
    parts.forEach((part, index) => {
      if (index > 0) parent.appendChild(el("br"));
      if (part) parent.appendChild(document.createTextNode(part));
    });
  }

  function link(href, label) {
    if (!SAFE_URL.test(href)) return null;
    const a = el("a");
    a.href = href;
    a.rel = "noopener noreferrer nofollow";
    a.target = "_blank";
    inline(a, label);
    return a;
  }

  function inline(parent, text) {
    let last = 0;
    let match;
    // A fresh regex state per call: nested calls (bold inside a link) must not share lastIndex.
    const re = new RegExp(INLINE.source, "g");
    while ((match = re.exec(text)) !== null) {
      if (match.index > last) appendText(parent, text.slice(last, match.index), true);
      last = re.lastIndex;
      if (match[1] !== undefined) {
        const code = el("code");
        code.textContent = match[2].length > 2 && match[2].startsWith(" ") && match[2].endsWith(" ")
          ? match[2].slice(1, -1) : match[2];
        parent.appendChild(code);
      } else if (match[3] !== undefined) {
        const a = link(match[4], match[3]);
        if (a) parent.appendChild(a);
        else appendText(parent, match[0], true);
      } else if (match[5] !== undefined) {
        const strong = el("strong");
        inline(strong, match[5]);
        parent.appendChild(strong);
      } else if (match[6] !== undefined) {
        const del = el("del");
        inline(del, match[6]);
        parent.appendChild(del);
      } else if (match[7] !== undefined) {
        const em = el("em");
        inline(em, match[7]);
        parent.appendChild(em);
      } else {
        const a = el("a");
        a.href = match[8];
        a.rel = "noopener noreferrer nofollow";
        a.target = "_blank";
        a.textContent = match[8];
        parent.appendChild(a);
      }
    }
    if (last < text.length) appendText(parent, text.slice(last), true);
  }

  function isBlockStart(line) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || LIST_ITEM.test(line);
  }

  function parseFence(lines, i, out) {
    const open = FENCE.exec(lines[i]);
    const marker = open[1];
    const body = [];
    i += 1;
    while (i < lines.length) {
      const line = lines[i];
      const trimmed = line.trim();
      if (trimmed.startsWith(marker[0].repeat(marker.length)) && /^[`~]+$/.test(trimmed)) {
        i += 1;
        break;
      }
      body.push(line);
      i += 1;
    }
    const pre = el("pre");
    const code = el("code");
    if (open[2]) code.className = "language-" + open[2].replace(/[^\w+#.-]/g, "");
    code.textContent = body.join("\n");
    pre.appendChild(code);
    out.appendChild(pre);
    return i;
  }

  function parseList(lines, i, out) {
    const first = LIST_ITEM.exec(lines[i]);
    const indent = first[1].length;
    const ordered = /\d/.test(first[2]);
    const list = el(ordered ? "ol" : "ul");
    if (ordered) {
      const start = parseInt(first[2], 10);
      if (start !== 1) list.start = start;
    }
    let item = null;
    while (i < lines.length) {
      const line = lines[i];
      const m = LIST_ITEM.exec(line);
      if (m && m[1].length === indent && /\d/.test(m[2]) === ordered) {
        item = { lines: [m[3]] };
        list.appendChild(el("li"));
        list.lastChild.__source = item;
        i += 1;
        continue;
      }
      if (line.trim() === "") {
        // A blank line ends the list unless the next line continues it (indented or another item).
        const next = lines[i + 1];
        if (next === undefined || !(/^\s+\S/.test(next) || LIST_ITEM.test(next))) break;
        item.lines.push("");
        i += 1;
        continue;
      }
      if (/^\s/.test(line) && item) {
        item.lines.push(line.replace(new RegExp("^\\s{0," + (indent + 4) + "}"), ""));
        i += 1;
        continue;
      }
      if (m && m[1].length > indent && item) {
        item.lines.push(line.slice(indent));
        i += 1;
        continue;
      }
      break;
    }
    for (const li of list.children) {
      const source = li.__source;
      delete li.__source;
      while (source.lines.length > 1 && source.lines[source.lines.length - 1].trim() === "") source.lines.pop();
      const nested = source.lines.length > 1;
      if (nested) li.appendChild(blocks(source.lines, true));
      else inline(li, source.lines[0]);
    }
    out.appendChild(list);
    return i;
  }

  function blocks(lines, tight) {
    const out = document.createDocumentFragment();
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (line.trim() === "") {
        i += 1;
        continue;
      }
      if (FENCE.test(line)) {
        i = parseFence(lines, i, out);
        continue;
      }
      const heading = HEADING.exec(line);
      if (heading) {
        // Message headings sit below the page's own h1/h2.
        const h = el("h" + Math.min(6, heading[1].length + 2));
        inline(h, heading[2]);
        out.appendChild(h);
        i += 1;
        continue;
      }
      if (RULE.test(line)) {
        out.appendChild(el("hr"));
        i += 1;
        continue;
      }
      if (QUOTE.test(line)) {
        const quoted = [];
        while (i < lines.length && QUOTE.test(lines[i])) {
          quoted.push(QUOTE.exec(lines[i])[1]);
          i += 1;
        }
        const bq = el("blockquote");
        bq.appendChild(blocks(quoted, false));
        out.appendChild(bq);
        continue;
      }
      if (LIST_ITEM.test(line)) {
        i = parseList(lines, i, out);
        continue;
      }
      const para = [];
      while (i < lines.length && lines[i].trim() !== "" && (para.length === 0 || !isBlockStart(lines[i]))) {
        para.push(lines[i]);
        i += 1;
      }
      const text = para.join("\n");
      if (tight) {
        // A list item's text stays bare (no <p> margins); a second paragraph starts on a new line.
        if (out.lastChild && out.lastChild.nodeName === "SPAN") out.appendChild(el("br"));
        const span = el("span");
        inline(span, text);
        out.appendChild(span);
      } else {
        const p = el("p");
        inline(p, text);
        out.appendChild(p);
      }
    }
    return out;
  }

  function render(text) {
    return blocks(String(text || "").replace(/\r\n?/g, "\n").split("\n"), false);
  }

  window.AriaMarkdown = Object.freeze({ render });
})();
