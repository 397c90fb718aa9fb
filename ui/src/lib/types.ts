// The engine's JSON shapes, under the names the components use. Every type here is an alias of a
// schema in the engine's OpenAPI document (/api/v1/openapi.json): ./api/schema.d.ts is generated
// from the checked-in copy ./api/openapi.json by openapi-typescript, and the tests fail when either
// falls behind the engine. Refresh both with `bash scripts/update-api-types.sh`; never edit them.

import type { components } from './api/schema';

type Schemas = components['schemas'];

export type Status = Schemas['Status'];
/** A reload of the configuration (the `config` event). */
export type ConfigReload = Schemas['ConfigReload'];
export type Health = Schemas['Health'];
export type BackendType = Schemas['BackendType'];
export type InstanceOptions = Schemas['InstanceOptions'];
/** CPU, RAM and GPU memory of a running instance's process tree. */
export type Resources = Schemas['Resources'];
export type Instance = Schemas['Instance'];

export type FieldType = Schemas['FieldType'];
/** One field of the instance form (`GET /api/v1/schema`). */
export type Field = Schemas['OptionField'];
export type Schema = Schemas['OptionsSchema'];

export type SystemReport = Schemas['SystemReport'];
export type Probe = Schemas['ProbeReport'];
export type Accelerator = Schemas['Accelerator'];

/** The desktop app's own settings (`/desktop/settings`; a headless engine has none). */
export type DesktopSettings = Schemas['DesktopSettings'];
/** A folder the desktop app can show in the file manager. */
export type DesktopFolder = Schemas['Folder'];
