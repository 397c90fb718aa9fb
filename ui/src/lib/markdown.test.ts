import { describe, expect, it } from 'vitest';
import { parseInline, parseMarkdown } from './markdown';

describe('parseMarkdown', () => {
  it('reads headings, lists, quotes, rules and fenced code', () => {
    const blocks = parseMarkdown('# Title\n\n- one\n- **two**\n\n3. three\n4. four\n\n> said\n\n---\n\n```rust\nfn main() {}\n```\nafter');
    expect(blocks.map((b) => b.kind)).toEqual(['heading', 'list', 'list', 'quote', 'rule', 'code', 'paragraph']);
    expect(blocks[1]).toEqual({
      kind: 'list',
      ordered: false,
      start: 1,
      items: [[{ kind: 'text', text: 'one' }], [{ kind: 'strong', children: [{ kind: 'text', text: 'two' }] }]],
    });
    expect(blocks[2]).toMatchObject({ kind: 'list', ordered: true, start: 3 });
    expect(blocks[5]).toEqual({ kind: 'code', lang: 'rust', text: 'fn main() {}' });
  });

  it('keeps a code block whose closing fence has not streamed in yet', () => {
    expect(parseMarkdown('Here:\n```py\nprint(1)\n')).toEqual([
      { kind: 'paragraph', inlines: [{ kind: 'text', text: 'Here:' }] },
      { kind: 'code', lang: 'py', text: 'print(1)\n' },
    ]);
  });
});

describe('parseInline', () => {
  it('finds code, emphasis and links, but not inside words or code', () => {
    expect(parseInline('use `a*b*c` in snake_case_name, *really*')).toEqual([
      { kind: 'text', text: 'use ' },
      { kind: 'code', text: 'a*b*c' },
      { kind: 'text', text: ' in snake_case_name, ' },
      { kind: 'em', children: [{ kind: 'text', text: 'really' }] },
    ]);
    expect(parseInline('2 * 3 * 4')).toEqual([{ kind: 'text', text: '2 * 3 * 4' }]);
    expect(parseInline('[docs](https://example.org/x)')).toEqual([
      { kind: 'link', href: 'https://example.org/x', children: [{ kind: 'text', text: 'docs' }] },
    ]);
  });

  it('leaves a link to a script as text', () => {
    expect(parseInline('[click](javascript:alert(1))')).toEqual([{ kind: 'text', text: '[click](javascript:alert(1))' }]);
  });
});
