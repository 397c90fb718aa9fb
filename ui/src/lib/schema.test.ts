import { describe, expect, it } from 'vitest';
import { fromRaw, InvalidValue, toRaw } from './schema';
import type { Field } from './types';

const environment: Field = {
  name: 'environment',
  type: 'string_map',
  help: '',
  common: true,
  flag: null,
  aliases: [],
  default: {},
  choices: null,
};

describe('a name-to-value field (an instance environment)', () => {
  it('shows NAME=value lines and reads them back, values as written', () => {
    const raw = toRaw(environment, { CUDA_VISIBLE_DEVICES: '0', LLAMA_ARG_X: 'a = b ' });
    expect(raw).toBe('CUDA_VISIBLE_DEVICES=0\nLLAMA_ARG_X=a = b ');
    expect(fromRaw(environment, `${raw}\n\n`)).toEqual({ CUDA_VISIBLE_DEVICES: '0', LLAMA_ARG_X: 'a = b ' });
  });

  it('leaves the option out when empty and refuses a line without a name or =', () => {
    expect(fromRaw(environment, '  \n')).toBeUndefined();
    expect(() => fromRaw(environment, 'JUST_A_NAME')).toThrow(InvalidValue);
    expect(() => fromRaw(environment, '=value')).toThrow(InvalidValue);
  });
});
