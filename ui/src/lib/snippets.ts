// Ready-to-paste client settings for the OpenAI-compatible endpoint.

export interface Snippet {
  id: string;
  label: string;
  /** Where the text goes. */
  where: string;
  code: string;
}

export function snippets(base: string, key: string, model: string): Snippet[] {
  const k = key || 'no-key-needed';
  const port = (() => {
    try {
      return new URL(base).port || '80';
    } catch {
      return '8080';
    }
  })();
  return [
    {
      id: 'curl',
      label: 'curl',
      where: 'A terminal on this machine.',
      code: `curl ${base}/chat/completions \\
  -H "Authorization: Bearer ${k}" \\
  -H "Content-Type: application/json" \\
  -d '{"model": "${model}", "messages": [{"role": "user", "content": "Hello!"}]}'`,
    },
    {
      id: 'python',
      label: 'Python',
      where: 'pip install openai',
      code: `from openai import OpenAI

client = OpenAI(base_url="${base}", api_key="${k}")
reply = client.chat.completions.create(
    model="${model}",
    messages=[{"role": "user", "content": "Hello!"}],
)
print(reply.choices[0].message.content)`,
    },
    {
      id: 'js',
      label: 'JavaScript',
      where: 'npm install openai',
      code: `import OpenAI from "openai";

const client = new OpenAI({ baseURL: "${base}", apiKey: "${k}" });
const reply = await client.chat.completions.create({
  model: "${model}",
  messages: [{ role: "user", content: "Hello!" }],
});
console.log(reply.choices[0].message.content);`,
    },
    {
      id: 'continue',
      label: 'Continue',
      where: '~/.continue/config.yaml',
      code: `models:
  - name: ${model} (Corral)
    provider: openai
    model: ${model}
    apiBase: ${base}
    apiKey: ${k}
    roles: [chat, edit, apply]`,
    },
    {
      id: 'zed',
      label: 'Zed',
      where: 'Zed settings.json; then enter the key for "Corral" in the Agent panel settings.',
      code: `{
  "language_models": {
    "openai_compatible": {
      "Corral": {
        "api_url": "${base}",
        "available_models": [
          { "name": "${model}", "display_name": "${model} (Corral)", "max_tokens": 8192 }
        ]
      }
    }
  }
}`,
    },
    {
      id: 'openwebui',
      label: 'Open WebUI',
      where: 'Docker on this machine (host networking reaches 127.0.0.1); or Admin Settings → Connections → OpenAI API with the same URL and key.',
      code: `docker run -d --network=host -e PORT=3000 \\
  -e OPENAI_API_BASE_URL=${base.replace('localhost', '127.0.0.1')} \\
  -e OPENAI_API_KEY=${k} \\
  -v open-webui:/app/backend/data --name open-webui \\
  ghcr.io/open-webui/open-webui:main
# then open http://127.0.0.1:3000${port === '3000' ? ' (pick another PORT: Corral uses 3000)' : ''}`,
    },
  ];
}
