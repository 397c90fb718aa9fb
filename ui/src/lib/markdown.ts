// The Markdown of model replies, parsed into plain data that Markdown.svelte renders with text
// nodes only. A model's text is whatever its prompt (or a web page it read) made it say, so it is
// never turned into HTML: markup in a reply shows as the characters it is. Covers what chat models
// write: paragraphs, headings, lists, quotes, rules, fenced code (also while its fence is still
// open mid-stream), inline code, bold, italic and links.

export type Inline =
  | { kind: 'text'; text: string }
  | { kind: 'code'; text: string }
  | { kind: 'strong' | 'em'; children: Inline[] }
  | { kind: 'link'; href: string; children: Inline[] }
  | { kind: 'break' };

export type Block =
  | { kind: 'paragraph'; inlines: Inline[] }
  | { kind: 'heading'; level: number; inlines: Inline[] }
  | { kind: 'code'; lang: string; text: string }
  | { kind: 'list'; ordered: boolean; start: number; items: Inline[][] }
  | { kind: 'quote'; blocks: Block[] }
  | { kind: 'rule' };

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;

export function parseMarkdown(source: string): Block[] {
  const lines = source.replace(/\r\n?/g, '\n').split('\n');
  const blocks: Block[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i++;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const body: string[] = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(marker)) body.push(lines[i++]);
      i++; // the closing fence (or the end of a reply still streaming)
      blocks.push({ kind: 'code', lang: fence[2], text: body.join('\n') });
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      blocks.push({ kind: 'heading', level: heading[1].length, inlines: parseInline(heading[2]) });
      i++;
      continue;
    }
    if (RULE.test(line)) {
      blocks.push({ kind: 'rule' });
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const body: string[] = [];
      while (i < lines.length && QUOTE.test(lines[i])) body.push(QUOTE.exec(lines[i++])![1]);
      blocks.push({ kind: 'quote', blocks: parseMarkdown(body.join('\n')) });
      continue;
    }
    const bullet = BULLET.exec(line);
    const numbered = NUMBERED.exec(line);
    if (bullet || numbered) {
      const pattern = bullet ? BULLET : NUMBERED;
      const items: string[] = [];
      while (i < lines.length && lines[i].trim()) {
        const item = pattern.exec(lines[i]);
        if (item) items.push(item[item.length - 1]);
        else if (/^\s/.test(lines[i]) && items.length) items[items.length - 1] += '\n' + lines[i].trim();
        else break;
        i++;
      }
      blocks.push({
        kind: 'list',
        ordered: !bullet,
        start: numbered ? Number(numbered[1]) : 1,
        items: items.map(parseInline),
      });
      continue;
    }
    const body: string[] = [];
    while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) body.push(lines[i++]);
    blocks.push({ kind: 'paragraph', inlines: parseInline(body.join('\n')) });
  }
  return blocks;
}

function startsBlock(line: string): boolean {
  return [FENCE, HEADING, BULLET, NUMBERED, RULE, QUOTE].some((p) => p.test(line));
}

/** Only addresses that leave for a web page or a mail client; `javascript:` and the like stay text. */
function safeHref(href: string): string | null {
  return /^(https?:\/\/|mailto:)/i.test(href.trim()) ? href.trim() : null;
}

export function parseInline(text: string): Inline[] {
  const out: Inline[] = [];
  const push = (t: string) => {
    if (!t) return;
    const last = out[out.length - 1];
    if (last?.kind === 'text') last.text += t;
    else out.push({ kind: 'text', text: t });
  };
  let i = 0;
  while (i < text.length) {
    const rest = text.slice(i);
    const c = text[i];
    if (c === '\n') {
      out.push({ kind: 'break' });
      i++;
      continue;
    }
    if (c === '\\' && /^\\[\\`*_[\]()#>~-]/.test(rest)) {
      push(text[i + 1]);
      i += 2;
      continue;
    }
    if (c === '`') {
      const ticks = /^`+/.exec(rest)![0];
      const end = text.indexOf(ticks, i + ticks.length);
      if (end !== -1) {
        out.push({ kind: 'code', text: text.slice(i + ticks.length, end) });
        i = end + ticks.length;
        continue;
      }
    }
    if (c === '*' || c === '_') {
      const double = rest.startsWith(c + c);
      const marker = double ? c + c : c;
      const end = text.indexOf(marker, i + marker.length);
      const inner = end === -1 ? '' : text.slice(i + marker.length, end);
      // `snake_case` and `2 * 3 * 4` are not emphasis: the inside must hug its markers.
      if (inner && !/^\s|\s$/.test(inner) && (c === '*' || !/\w/.test(text[i - 1] ?? ''))) {
        out.push({ kind: double ? 'strong' : 'em', children: parseInline(inner) });
        i = end + marker.length;
        continue;
      }
    }
    if (c === '[') {
      const link = /^\[([^\]]*)\]\(([^)\s]+)\)/.exec(rest);
      const href = link && safeHref(link[2]);
      if (link && href) {
        out.push({ kind: 'link', href, children: parseInline(link[1] || href) });
        i += link[0].length;
        continue;
      }
    }
    push(c);
    i++;
  }
  return out;
}
