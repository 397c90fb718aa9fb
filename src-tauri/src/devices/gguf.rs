//! Reads what the fit check needs from a GGUF file: the metadata key/values and the tensor infos
//! (llama.cpp's `gguf.c` layout), never the weights. Unknown and large values are skipped by
//! seeking, so a 150k-token vocabulary costs a pass over its bytes but no allocation.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

/// `GGUF` read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// llama.cpp's `GGUF_DEFAULT_ALIGNMENT`: the data section starts at a multiple of it.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Keys longer than this are not metadata llama.cpp ever wrote; the file is not what it claims.
const MAX_KEY_LEN: u64 = 64 * 1024;
/// Strings longer than this are skipped instead of kept (chat templates are ~10 KiB).
const MAX_KEPT_STRING: u64 = 64 * 1024;
/// Integer arrays up to this length are kept (per-layer head counts); longer ones are skipped.
const MAX_KEPT_ARRAY: u64 = 4096;
/// `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays: real files nest one level; the bound keeps a crafted file from recursing
/// the reader off its stack.
const MAX_ARRAY_NESTING: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a GGUF file", path.display())]
    NotGguf { path: PathBuf },
    #[error("{} uses GGUF version {version}, which Corral cannot read (2 and 3 are supported)", path.display())]
    Version { path: PathBuf, version: u32 },
    #[error("{} is damaged: {what}", path.display())]
    Malformed { path: PathBuf, what: String },
}

/// One metadata value, as much of it as the fit check can use.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i128),
    Float(f64),
    Bool(bool),
    String(String),
    /// Integer arrays of at most `MAX_KEPT_ARRAY` entries.
    IntArray(Vec<i128>),
    /// Anything not kept: long strings and arrays, arrays of other types.
    Skipped,
}

/// One tensor's description (its data stays on disk).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    /// `ggml_type` number.
    pub ggml_type: u32,
    /// From the start of the data section.
    pub offset: u64,
}

/// The header of a GGUF file.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Where the tensor data begins.
    pub data_offset: u64,
    /// Size of the whole file.
    pub file_size: u64,
}

impl Header {
    /// Bytes of tensor data: the file after the header, so alignment padding is counted as the
    /// loader maps it.
    pub fn tensor_data_bytes(&self) -> u64 {
        self.file_size.saturating_sub(self.data_offset)
    }

    pub fn architecture(&self) -> Option<&str> {
        match self.metadata.get("general.architecture") {
            Some(Value::String(arch)) => Some(arch),
            _ => None,
        }
    }

    /// `<arch>.<suffix>` as an unsigned integer; for a per-layer array, its largest entry.
    pub fn arch_uint(&self, suffix: &str) -> Option<u64> {
        let arch = self.architecture()?;
        match self.metadata.get(&format!("{arch}.{suffix}"))? {
            Value::Int(value) => u64::try_from(*value).ok(),
            Value::IntArray(values) => values
                .iter()
                .filter_map(|value| u64::try_from(*value).ok())
                .max(),
            _ => None,
        }
    }
}

/// Reads the header of the GGUF file at `path`.
pub fn read_header(path: &Path) -> Result<Header, GgufError> {
    let io = |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_size = file.metadata().map_err(io)?.len();
    let mut reader = Reader {
        inner: BufReader::with_capacity(256 * 1024, file),
        path,
        file_size,
        nesting: 0,
        position: 0,
    };
    reader.header()
}

struct Reader<'a, R> {
    inner: R,
    path: &'a Path,
    file_size: u64,
    /// Arrays being read, one inside the other.
    nesting: u32,
    /// Bytes read or skipped so far. Counted here: asking the file (`stream_position`) is a
    /// syscall, and a vocabulary skips one string per token.
    position: u64,
}

impl<R: Read + Seek> Reader<'_, R> {
    fn header(&mut self) -> Result<Header, GgufError> {
        let magic = self.u32().map_err(|_| self.not_gguf())?;
        if magic != MAGIC {
            return Err(self.not_gguf());
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version {
                path: self.path.to_path_buf(),
                version,
            });
        }
        let tensor_count = self.u64()?;
        let kv_count = self.u64()?;
        // Every entry takes at least a few bytes: counts beyond the file size are lies that
        // would otherwise make us loop or allocate for nothing.
        if tensor_count > self.file_size || kv_count > self.file_size {
            return Err(self.malformed("counts larger than the file"));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = self.key()?;
            let value_type = self.u32()?;
            let value = self.value(value_type)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::new();
        for _ in 0..tensor_count {
            tensors.push(self.tensor_info()?);
        }
        let alignment = match metadata.get("general.alignment") {
            Some(Value::Int(alignment)) => u64::try_from(*alignment)
                .ok()
                .filter(|a| *a > 0)
                .ok_or_else(|| self.malformed("general.alignment is not positive"))?,
            _ => DEFAULT_ALIGNMENT,
        };
        let data_offset = self.position.div_ceil(alignment).saturating_mul(alignment);
        Ok(Header {
            version,
            metadata,
            tensors,
            data_offset,
            file_size: self.file_size,
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, GgufError> {
        let name = self.key()?;
        let n_dims = self.u32()?;
        if n_dims > MAX_DIMS {
            return Err(self.malformed(format!("tensor {name} has {n_dims} dimensions")));
        }
        let dims = (0..n_dims)
            .map(|_| self.u64())
            .collect::<Result<Vec<_>, _>>()?;
        let ggml_type = self.u32()?;
        let offset = self.u64()?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }

    fn value(&mut self, value_type: u32) -> Result<Value, GgufError> {
        Ok(match value_type {
            0 => Value::Int(self.bytes::<1>()?[0].into()),
            1 => Value::Int(i8::from_le_bytes(self.bytes()?).into()),
            2 => Value::Int(u16::from_le_bytes(self.bytes()?).into()),
            3 => Value::Int(i16::from_le_bytes(self.bytes()?).into()),
            4 => Value::Int(self.u32()?.into()),
            5 => Value::Int(i32::from_le_bytes(self.bytes()?).into()),
            6 => Value::Float(f32::from_le_bytes(self.bytes()?).into()),
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            8 => {
                let len = self.u64()?;
                if len > MAX_KEPT_STRING {
                    self.skip(len)?;
                    Value::Skipped
                } else {
                    Value::String(self.string(len)?)
                }
            }
            9 => self.array()?,
            10 => Value::Int(self.u64()?.into()),
            11 => Value::Int(i64::from_le_bytes(self.bytes()?).into()),
            12 => Value::Float(f64::from_le_bytes(self.bytes()?)),
            other => return Err(self.malformed(format!("unknown value type {other}"))),
        })
    }

    fn array(&mut self) -> Result<Value, GgufError> {
        if self.nesting >= MAX_ARRAY_NESTING {
            return Err(self.malformed(format!("arrays nested more than {MAX_ARRAY_NESTING} deep")));
        }
        self.nesting += 1;
        let array = self.array_items();
        self.nesting -= 1;
        array
    }

    fn array_items(&mut self) -> Result<Value, GgufError> {
        let item_type = self.u32()?;
        let count = self.u64()?;
        if count > self.file_size {
            return Err(self.malformed("an array longer than the file"));
        }
        let fixed_size = match item_type {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        let is_int = matches!(item_type, 0..=5 | 10 | 11);
        if is_int && count <= MAX_KEPT_ARRAY {
            let mut values = Vec::with_capacity(usize::try_from(count).unwrap_or_default());
            for _ in 0..count {
                match self.value(item_type)? {
                    Value::Int(value) => values.push(value),
                    _ => return Err(self.malformed("a non-integer in an integer array")),
                }
            }
            return Ok(Value::IntArray(values));
        }
        match (fixed_size, item_type) {
            (Some(size), _) => self.skip(count.saturating_mul(size))?,
            (None, 8) => {
                for _ in 0..count {
                    let len = self.u64()?;
                    self.skip(len)?;
                }
            }
            (None, 9) => {
                for _ in 0..count {
                    self.array()?;
                }
            }
            (None, other) => return Err(self.malformed(format!("unknown array type {other}"))),
        }
        Ok(Value::Skipped)
    }

    fn key(&mut self) -> Result<String, GgufError> {
        let len = self.u64()?;
        if len > MAX_KEY_LEN {
            return Err(self.malformed(format!("a name of {len} bytes")));
        }
        self.string(len)
    }

    fn string(&mut self, len: u64) -> Result<String, GgufError> {
        let mut bytes = vec![0; usize::try_from(len).map_err(|_| self.malformed("huge string"))?];
        self.inner.read_exact(&mut bytes).map_err(|e| self.io(e))?;
        self.position += len;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn skip(&mut self, len: u64) -> Result<(), GgufError> {
        let end = self.position.saturating_add(len);
        if end > self.file_size {
            return Err(self.malformed("a value runs past the end of the file"));
        }
        let len = i64::try_from(len).map_err(|_| self.malformed("huge value"))?;
        self.inner.seek_relative(len).map_err(|e| self.io(e))?;
        self.position = end;
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buffer = [0; N];
        self.inner.read_exact(&mut buffer).map_err(|e| self.io(e))?;
        self.position += N as u64;
        Ok(buffer)
    }

    fn io(&self, source: std::io::Error) -> GgufError {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            self.malformed("it ends inside its header")
        } else {
            GgufError::Io {
                path: self.path.to_path_buf(),
                source,
            }
        }
    }

    fn not_gguf(&self) -> GgufError {
        GgufError::NotGguf {
            path: self.path.to_path_buf(),
        }
    }

    fn malformed(&self, what: impl Into<String>) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_path_buf(),
            what: what.into(),
        }
    }
}

/// Writes GGUF files for tests and benchmarks: metadata and tensor infos as llama.cpp lays them
/// out, and `data_bytes` zero bytes of tensor data.
#[doc(hidden)]
pub mod writer {
    pub enum Meta<'a> {
        U32(u32),
        U64(u64),
        F32(f32),
        Str(&'a str),
        I32Array(&'a [i32]),
        StrArray(&'a [&'a str]),
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// The bytes of a GGUF v3 file.
    pub fn gguf(
        meta: &[(&str, Meta<'_>)],
        tensors: &[(&str, &[u64], u32)],
        data_bytes: u64,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        for (key, value) in meta {
            string(&mut out, key);
            match value {
                Meta::U32(v) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Meta::U64(v) => {
                    out.extend_from_slice(&10u32.to_le_bytes());
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Meta::F32(v) => {
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Meta::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Meta::I32Array(values) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&5u32.to_le_bytes());
                    out.extend_from_slice(&(values.len() as u64).to_le_bytes());
                    for v in *values {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
                Meta::StrArray(values) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(values.len() as u64).to_le_bytes());
                    for v in *values {
                        string(&mut out, v);
                    }
                }
            }
        }
        let mut offset = 0u64;
        for (name, dims, ggml_type) in tensors {
            string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in *dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ggml_type.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.resize(out.len() + data_bytes as usize, 0);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::writer::{gguf, Meta};
    use super::*;

    fn write(dir: &tempfile::TempDir, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn metadata_tensors_and_data_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let vocab: Vec<String> = (0..10_000).map(|i| format!("token{i}")).collect();
        let vocab: Vec<&str> = vocab.iter().map(String::as_str).collect();
        let bytes = gguf(
            &[
                ("general.architecture", Meta::Str("llama")),
                ("llama.block_count", Meta::U32(32)),
                ("llama.context_length", Meta::U64(8192)),
                ("llama.attention.head_count_kv", Meta::I32Array(&[8, 8, 4])),
                ("llama.rope.freq_base", Meta::F32(10000.0)),
                ("tokenizer.ggml.tokens", Meta::StrArray(&vocab)),
            ],
            &[
                ("token_embd.weight", &[64, 100], 1),
                ("output.weight", &[64], 0),
            ],
            1000,
        );
        let path = write(&dir, &bytes);
        let header = read_header(&path).unwrap();
        assert_eq!(header.version, 3);
        assert_eq!(header.architecture(), Some("llama"));
        assert_eq!(header.arch_uint("block_count"), Some(32));
        assert_eq!(header.arch_uint("context_length"), Some(8192));
        assert_eq!(header.arch_uint("attention.head_count_kv"), Some(8));
        assert_eq!(header.arch_uint("embedding_length"), None);
        assert_eq!(header.tensors.len(), 2);
        assert_eq!(header.tensors[0].dims, vec![64, 100]);
        assert_eq!(header.tensor_data_bytes(), 1000);
        assert_eq!(
            header.metadata.get("tokenizer.ggml.tokens"),
            Some(&Value::Skipped)
        );
    }

    #[test]
    fn other_files_and_truncated_headers_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, b"PK\x03\x04 this is a zip file");
        assert!(matches!(read_header(&path), Err(GgufError::NotGguf { .. })));

        let full = gguf(&[("general.architecture", Meta::Str("llama"))], &[], 0);
        let path = write(&dir, &full[..40]);
        let error = read_header(&path).unwrap_err();
        assert!(
            error.to_string().contains("ends inside its header"),
            "{error}"
        );

        let mut lying = full.clone();
        lying[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let path = write(&dir, &lying);
        assert!(matches!(
            read_header(&path),
            Err(GgufError::Malformed { .. })
        ));

        // Arrays of arrays of arrays...: refused, not recursed into until the stack runs out.
        let mut nested = gguf(&[], &[], 0)[..24].to_vec();
        nested[16..24].copy_from_slice(&1u64.to_le_bytes());
        nested.extend_from_slice(&4u64.to_le_bytes());
        nested.extend_from_slice(b"deep");
        nested.extend_from_slice(&9u32.to_le_bytes());
        for _ in 0..200_000 {
            nested.extend_from_slice(&9u32.to_le_bytes());
            nested.extend_from_slice(&1u64.to_le_bytes());
        }
        let path = write(&dir, &nested);
        let error = read_header(&path).unwrap_err();
        assert!(error.to_string().contains("nested"), "{error}");

        let missing = dir.path().join("absent.gguf");
        assert!(matches!(read_header(&missing), Err(GgufError::Io { .. })));
    }

    #[test]
    fn the_real_tiny_model_reads_as_a_two_layer_llama() {
        let model = std::env::var("CORRAL_TEST_MODEL")
            .expect("CORRAL_TEST_MODEL is not set: run the tests through scripts/test.sh");
        let header = read_header(Path::new(&model)).unwrap();
        assert_eq!(header.architecture(), Some("llama"));
        assert_eq!(header.arch_uint("block_count"), Some(2));
        assert_eq!(header.arch_uint("embedding_length"), Some(64));
        assert_eq!(header.arch_uint("context_length"), Some(512));
        assert_eq!(header.arch_uint("attention.head_count"), Some(4));
        assert_eq!(header.arch_uint("attention.head_count_kv"), Some(2));
        let data = header.tensor_data_bytes();
        // Most of the file is the f16 weights (the 32k-token embedding dominates).
        assert!(
            data > header.file_size / 2 && data < header.file_size,
            "{data}"
        );
    }
}
