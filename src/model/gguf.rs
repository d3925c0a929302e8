//! GGUF reader (versions 2 and 3, little-endian) and a small writer for tests and tiny
//! synthetic models.
//!
//! The parse works on a `&[u8]` and touches no file system, so it runs on wasm32 as well;
//! `Gguf::open` adds a memory map on native targets. Every count and length read from the
//! file is checked against the bytes that are really there before anything is allocated,
//! and every tensor's data range is checked once here, so `tensor_data` can hand out slices.
//!
//! What it leaves to others: the meaning of metadata keys (`model::config`), decoding of
//! quant blocks (`model::quant`), and the tokenizer (`tokenizer`). Version 1 files,
//! big-endian files and tensor types other than F32, F16, BF16, Q4_0, Q4_1 and Q8_0 are
//! rejected with a typed error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;

#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

/// The first four bytes of every GGUF file.
const MAGIC: [u8; 4] = *b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: usize = 4;
/// Arrays of arrays are legal GGUF but no model uses more than one level; the limit keeps a
/// hostile file from recursing the parser off its stack.
const MAX_ARRAY_DEPTH: usize = 4;
/// Smallest tensor info on disk: name length (8), n_dims (4), one dim (8), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 32;
/// Smallest metadata entry on disk: key length (8), value type (4), a one-byte value.
const MIN_META_ENTRY_BYTES: u64 = 13;

/// Errors from reading a GGUF file or decoding its blocks.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read gguf file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gguf file {} not found", path.display())]
    NotFound { path: PathBuf },
    #[error(
        "gguf file truncated: {what} at offset {offset} needs {needed} bytes, \
         but the file ends at {file_len}"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("bad magic \"{}\": not a gguf file (expected \"GGUF\")", found.escape_ascii())]
    BadMagic { found: [u8; 4] },
    #[error("unsupported gguf version {version}: expected 2 or 3")]
    UnsupportedVersion { version: u32 },
    #[error(
        "tensor `{name}` has unsupported ggml type {ggml_type}: expected f32 (0), f16 (1), \
         q4_0 (2), q4_1 (3), q8_0 (8) or bf16 (30)"
    )]
    UnsupportedTensorType { name: String, ggml_type: u32 },
    #[error(
        "tensor `{name}` data (offset {offset}, {n_bytes} bytes) runs past the end of the \
         file ({file_len} bytes)"
    )]
    TensorOutOfBounds {
        name: String,
        offset: u64,
        n_bytes: u64,
        file_len: u64,
    },
    #[error("absurd {what} {count}: the whole file has room for at most {limit}")]
    AbsurdCount {
        what: String,
        count: u64,
        limit: u64,
    },
    #[error("absurd size of {what}: {bytes} bytes, but the whole file is {limit} bytes")]
    AbsurdSize {
        what: String,
        bytes: u64,
        limit: u64,
    },
    #[error("tensor `{name}` has a bad shape {dims:?}: {reason}")]
    BadShape {
        name: String,
        dims: Vec<u64>,
        reason: String,
    },
    #[error(
        "tensor `{name}` is misaligned: data offset {offset} is not a multiple of the \
         alignment {alignment}"
    )]
    Misaligned {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error("duplicate tensor `{name}`: each tensor name must appear once")]
    DuplicateTensor { name: String },
    #[error("duplicate metadata key `{key}`: each key must appear once")]
    DuplicateKey { key: String },
    #[error("bad utf-8 in {what}")]
    BadUtf8 { what: String },
    #[error("metadata key `{key}` has unknown value type {value_type}: expected 0 to 12")]
    UnknownMetaType { key: String, value_type: u32 },
    #[error("metadata key `{key}` nests arrays more than {limit} deep")]
    ArrayTooDeep { key: String, limit: usize },
    #[error("bad general.alignment {alignment}: expected a power of two")]
    BadAlignment { alignment: u64 },
    #[error("metadata key `{key}` is missing")]
    MissingKey { key: String },
    #[error("metadata key `{key}` is {found}, expected {expected}")]
    WrongMetaType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("metadata key `{key}` = {value} does not fit in {expected}")]
    MetaOutOfRange {
        key: String,
        expected: &'static str,
        value: String,
    },
    #[error(
        "cannot decode {ggml_type}: {n_elems} values are not a whole number of \
         {block_elems}-value blocks"
    )]
    NotBlockMultiple {
        ggml_type: GgmlType,
        n_elems: usize,
        block_elems: usize,
    },
    #[error(
        "cannot decode {ggml_type}: {n_elems} values take {expected_bytes} bytes, got {n_bytes}"
    )]
    QuantByteCount {
        ggml_type: GgmlType,
        n_elems: usize,
        expected_bytes: usize,
        n_bytes: usize,
    },
    #[error("row {row} is out of range: the tensor has {n_rows} rows")]
    RowOutOfRange { row: usize, n_rows: usize },
}

/// The ggml tensor types sinkstar can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
}

impl GgmlType {
    /// Every supported type, in ggml id order.
    pub const ALL: [GgmlType; 6] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::BF16,
    ];

    /// The type for a ggml type id, or `None` for ids sinkstar does not decode.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        match id {
            0 => Some(GgmlType::F32),
            1 => Some(GgmlType::F16),
            2 => Some(GgmlType::Q4_0),
            3 => Some(GgmlType::Q4_1),
            8 => Some(GgmlType::Q8_0),
            30 => Some(GgmlType::BF16),
            _ => None,
        }
    }

    /// The ggml type id as stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
        }
    }

    /// Values per block (1 for the float types).
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18, // f16 d + 16 bytes of nibbles
            GgmlType::Q4_1 => 20, // f16 d + f16 m + 16 bytes of nibbles
            GgmlType::Q8_0 => 34, // f16 d + 32 int8
        }
    }

    /// Lower-case ggml name (`q4_1`), as in llama.cpp's logs.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::BF16 => "bf16",
        }
    }

    /// Bytes taken by `n_elems` values, or `None` if `n_elems` is not a whole number of
    /// blocks or the size overflows.
    pub fn row_bytes(self, n_elems: usize) -> Option<usize> {
        if !n_elems.is_multiple_of(self.block_elems()) {
            return None;
        }
        (n_elems / self.block_elems()).checked_mul(self.block_bytes())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value. Arrays hold values of one type (GGUF stores the element type once).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF value type id.
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }

    /// Short type name for error messages (`u32`, `string`, `array`).
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// Type description for error messages; arrays name their element type.
    fn describe(&self) -> String {
        match self {
            MetaValue::Array(items) => match items.first() {
                Some(first) => format!("an array of {}", first.type_name()),
                None => "an empty array".to_string(),
            },
            other => format!("a {}", other.type_name()),
        }
    }

    /// Any integer variant, widened.
    pub fn as_int(&self) -> Option<i128> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v.into()),
            _ => None,
        }
    }

    /// An F32 or F64 value as f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetaValue::F32(v) => Some(v),
            MetaValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(items) => Some(items),
            _ => None,
        }
    }
}

macro_rules! meta_value_from {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl From<$t> for MetaValue {
            fn from(v: $t) -> MetaValue {
                MetaValue::$variant(v)
            }
        })*
    };
}

meta_value_from!(
    u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32,
    u64 => U64, i64 => I64, f32 => F32, f64 => F64, bool => Bool, String => String,
);

impl From<&str> for MetaValue {
    fn from(v: &str) -> MetaValue {
        MetaValue::String(v.to_string())
    }
}

impl<T: Into<MetaValue>> From<Vec<T>> for MetaValue {
    fn from(items: Vec<T>) -> MetaValue {
        MetaValue::Array(items.into_iter().map(Into::into).collect())
    }
}

/// Where one tensor lives in the file and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml `ne` order: `dims[0]` is the contiguous dimension (the row length).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the first block in the file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elems(&self) -> u64 {
        // Cannot overflow: the product was checked when the file was parsed.
        self.dims.iter().product()
    }

    /// Number of rows: the product of every dimension after the first.
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// The bytes behind a `Gguf`: a memory map on native targets, or an owned buffer.
enum Storage {
    Owned(Vec<u8>),
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned(bytes) => bytes,
            #[cfg(not(target_arch = "wasm32"))]
            Storage::Mapped(map) => map,
        }
    }
}

/// A parsed GGUF file: metadata, tensor infos, and the bytes the tensors point into.
pub struct Gguf {
    pub version: u32,
    pub alignment: u64,
    pub metadata: BTreeMap<String, MetaValue>,
    /// In file order; look tensors up by name with `tensor`, never by position.
    pub tensors: Vec<TensorInfo>,
    data_offset: u64,
    index: HashMap<String, usize>,
    storage: Storage,
}

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("file_len", &self.storage.bytes().len())
            .finish()
    }
}

impl Gguf {
    /// Memory-maps and parses the file at `path`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let io_error = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::NotFound {
                GgufError::NotFound {
                    path: path.to_path_buf(),
                }
            } else {
                GgufError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        };
        let file = std::fs::File::open(path).map_err(io_error)?;
        let len = file.metadata().map_err(io_error)?.len();
        // Mapping zero bytes fails on Linux; an empty file is simply too short.
        let storage = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and sinkstar never writes model files. Another
            // process truncating the file while it is mapped would fault; that is the usual
            // contract of memory-mapped model loaders (llama.cpp maps the same way).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
            Storage::Mapped(map)
        };
        Gguf::from_storage(storage)
    }

    /// Parses a GGUF file held in memory (the only way in on wasm32).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf, GgufError> {
        Gguf::from_storage(Storage::Owned(bytes))
    }

    fn from_storage(storage: Storage) -> Result<Gguf, GgufError> {
        let header = parse(storage.bytes())?;
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Gguf {
            version: header.version,
            alignment: header.alignment,
            metadata: header.metadata,
            tensors: header.tensors,
            data_offset: header.data_offset,
            index,
            storage,
        })
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Absolute offset of the (aligned) data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor of this file. Bounds were checked at parse time; an info
    /// that does not come from this file and points outside it gives an empty slice.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let range = usize::try_from(info.offset).ok().and_then(|start| {
            let end = start.checked_add(usize::try_from(info.n_bytes).ok()?)?;
            Some(start..end)
        });
        range
            .and_then(|r| self.storage.bytes().get(r))
            .unwrap_or(&[])
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_string(),
        })
    }

    fn get_int<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<T, GgufError> {
        let value = self.require(key)?;
        let int = value.as_int().ok_or_else(|| GgufError::WrongMetaType {
            key: key.to_string(),
            expected,
            found: value.describe(),
        })?;
        T::try_from(int).map_err(|_| GgufError::MetaOutOfRange {
            key: key.to_string(),
            expected,
            value: int.to_string(),
        })
    }

    /// An integer of any GGUF integer type whose value fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.get_int(key, "u32")
    }

    /// An integer of any GGUF integer type whose value fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_int(key, "u64")
    }

    /// An integer of any GGUF integer type whose value fits in i64.
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        self.get_int(key, "i64")
    }

    /// An integer of any GGUF integer type whose value fits in usize (32 bits on wasm32).
    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        self.get_int(key, "usize")
    }

    /// An F32 or F64 value as f32.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let value = self.require(key)?;
        value.as_f32().ok_or_else(|| GgufError::WrongMetaType {
            key: key.to_string(),
            expected: "a float",
            found: value.describe(),
        })
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let value = self.require(key)?;
        value.as_str().ok_or_else(|| GgufError::WrongMetaType {
            key: key.to_string(),
            expected: "a string",
            found: value.describe(),
        })
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let value = self.require(key)?;
        value.as_bool().ok_or_else(|| GgufError::WrongMetaType {
            key: key.to_string(),
            expected: "a bool",
            found: value.describe(),
        })
    }

    pub fn get_array(&self, key: &str) -> Result<&[MetaValue], GgufError> {
        let value = self.require(key)?;
        value.as_array().ok_or_else(|| GgufError::WrongMetaType {
            key: key.to_string(),
            expected: "an array",
            found: value.describe(),
        })
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let value = self.require(key)?;
        let wrong = || GgufError::WrongMetaType {
            key: key.to_string(),
            expected: "an array of strings",
            found: value.describe(),
        };
        let items = value.as_array().ok_or_else(wrong)?;
        items.iter().map(|v| v.as_str().ok_or_else(wrong)).collect()
    }

    /// An array of any integer type whose values all fit in i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        let value = self.require(key)?;
        let wrong = || GgufError::WrongMetaType {
            key: key.to_string(),
            expected: "an array of integers",
            found: value.describe(),
        };
        let items = value.as_array().ok_or_else(wrong)?;
        items
            .iter()
            .map(|v| {
                let int = v.as_int().ok_or_else(wrong)?;
                i32::try_from(int).map_err(|_| GgufError::MetaOutOfRange {
                    key: key.to_string(),
                    expected: "i32",
                    value: int.to_string(),
                })
            })
            .collect()
    }
}

/// Everything `parse` reads; `Gguf` adds the storage and the name index.
struct Header {
    version: u32,
    alignment: u64,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    data_offset: u64,
}

/// A cursor over the file that turns every short read into `Truncated`.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.file_len(),
            });
        }
        // n <= remaining, which fits in usize.
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        Ok(bytes.try_into().expect("take returned exactly N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Rejects a count of items of at least `min_bytes` each that could not fit even in the
    /// whole file (corrupt, not merely cut short); returns how many could fit in what
    /// remains, a capacity that is safe to allocate. A count that fits the file but not its
    /// rest is left to fail as `Truncated` where the data ends.
    fn check_count(
        &self,
        count: u64,
        min_bytes: u64,
        what: &dyn Fn() -> String,
    ) -> Result<usize, GgufError> {
        let limit = self.file_len() / min_bytes;
        if count > limit {
            return Err(GgufError::AbsurdCount {
                what: what(),
                count,
                limit,
            });
        }
        // count <= file_len / min_bytes, which fits in usize.
        Ok(count.min(self.remaining() / min_bytes) as usize)
    }

    /// A GGUF string: u64 length, then that many bytes of utf-8.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len_what = || format!("length of {}", what());
        let len = self.u64(&len_what)?;
        if len > self.file_len() {
            return Err(GgufError::AbsurdSize {
                what: what(),
                bytes: len,
                limit: self.file_len(),
            });
        }
        let offset = self.pos;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(GgufError::BadUtf8 {
                what: format!("{} at offset {offset}", what()),
            }),
        }
    }

    fn value(&mut self, key: &str, value_type: u32, depth: usize) -> Result<MetaValue, GgufError> {
        let what = || format!("value of metadata key `{key}`");
        Ok(match value_type {
            0 => MetaValue::U8(u8::from_le_bytes(self.array(&what)?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => MetaValue::Bool(self.array::<1>(&what)?[0] != 0),
            8 => MetaValue::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::ArrayTooDeep {
                        key: key.to_string(),
                        limit: MAX_ARRAY_DEPTH,
                    });
                }
                let elem_what = || format!("element type of metadata array `{key}`");
                let elem_type = self.u32(&elem_what)?;
                let min_bytes =
                    min_value_bytes(elem_type).ok_or_else(|| GgufError::UnknownMetaType {
                        key: key.to_string(),
                        value_type: elem_type,
                    })?;
                let len_what = || format!("array length of metadata key `{key}`");
                let len = self.u64(&len_what)?;
                let capacity = self.check_count(len, min_bytes, &len_what)?;
                let mut items = Vec::with_capacity(capacity);
                for _ in 0..len {
                    items.push(self.value(key, elem_type, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            _ => {
                return Err(GgufError::UnknownMetaType {
                    key: key.to_string(),
                    value_type,
                })
            }
        })
    }
}

/// Smallest encoding of one value of a GGUF value type, or `None` for unknown types.
fn min_value_bytes(value_type: u32) -> Option<u64> {
    match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        8 | 10..=12 => Some(8),
        9 => Some(12), // element type (4) + length (8)
        _ => None,
    }
}

fn parse(bytes: &[u8]) -> Result<Header, GgufError> {
    let mut r = Reader { bytes, pos: 0 };

    let magic: [u8; 4] = r.array(&|| "magic".to_string())?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = r.u32(&|| "version".to_string())?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let n_tensors = r.u64(&|| "tensor count".to_string())?;
    let n_meta = r.u64(&|| "metadata count".to_string())?;
    // Each count is checked just before its items, so a file cut short reports where it ends.
    r.check_count(n_meta, MIN_META_ENTRY_BYTES, &|| {
        "metadata count".to_string()
    })?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_meta {
        let key = r.string(&|| format!("metadata key {i}"))?;
        let value_type = r.u32(&|| format!("value type of metadata key `{key}`"))?;
        let value = r.value(&key, value_type, 0)?;
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(value) => {
            let key = "general.alignment".to_string();
            let int = value.as_int().ok_or_else(|| GgufError::WrongMetaType {
                key: key.clone(),
                expected: "an unsigned integer",
                found: value.describe(),
            })?;
            let alignment = u64::try_from(int).map_err(|_| GgufError::MetaOutOfRange {
                key,
                expected: "u64",
                value: int.to_string(),
            })?;
            if !alignment.is_power_of_two() {
                return Err(GgufError::BadAlignment { alignment });
            }
            alignment
        }
    };

    let tensor_capacity = r.check_count(n_tensors, MIN_TENSOR_INFO_BYTES, &|| {
        "tensor count".to_string()
    })?;
    let mut tensors = Vec::with_capacity(tensor_capacity);
    let mut seen = HashSet::with_capacity(tensor_capacity);
    for i in 0..n_tensors {
        let name = r.string(&|| format!("name of tensor {i}"))?;
        let n_dims = r.u32(&|| format!("dimension count of tensor `{name}`"))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(GgufError::BadShape {
                name,
                dims: Vec::new(),
                reason: format!("{n_dims} dimensions, expected 1 to {MAX_DIMS}"),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&|| format!("dimensions of tensor `{name}`"))?);
        }
        let type_id = r.u32(&|| format!("type of tensor `{name}`"))?;
        let rel_offset = r.u64(&|| format!("data offset of tensor `{name}`"))?;
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(GgufError::UnsupportedTensorType {
                name,
                ggml_type: type_id,
            });
        };
        let n_bytes = match shape_bytes(&dims, ggml_type) {
            Ok(n) => n,
            Err(reason) => return Err(GgufError::BadShape { name, dims, reason }),
        };
        if !rel_offset.is_multiple_of(alignment) {
            return Err(GgufError::Misaligned {
                name,
                offset: rel_offset,
                alignment,
            });
        }
        if !seen.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor { name });
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset: rel_offset,
            n_bytes,
        });
    }

    // The data section starts at the next multiple of the alignment after the infos.
    let infos_end = r.pos as u64;
    let data_offset = infos_end.div_ceil(alignment).saturating_mul(alignment);
    let file_len = r.file_len();
    if !tensors.is_empty() && data_offset > file_len {
        return Err(GgufError::Truncated {
            what: "padding before the tensor data".to_string(),
            offset: infos_end,
            needed: data_offset - infos_end,
            file_len,
        });
    }
    for t in &mut tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => t.offset = start,
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    name: t.name.clone(),
                    offset: data_offset.saturating_add(t.offset),
                    n_bytes: t.n_bytes,
                    file_len,
                })
            }
        }
    }

    Ok(Header {
        version,
        alignment,
        metadata,
        tensors,
        data_offset,
    })
}

/// Byte size of a tensor of shape `dims`, or why the shape is impossible.
fn shape_bytes(dims: &[u64], ggml_type: GgmlType) -> Result<u64, String> {
    if dims.contains(&0) {
        return Err("a dimension is zero".to_string());
    }
    // ggml keeps element counts in i64.
    let n_elems = dims
        .iter()
        .try_fold(1u64, |acc, &d| {
            acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64)
        })
        .ok_or_else(|| "the element count overflows".to_string())?;
    let block_elems = ggml_type.block_elems() as u64;
    if !dims[0].is_multiple_of(block_elems) {
        return Err(format!(
            "the row length {} is not a multiple of the {ggml_type} block size {block_elems}",
            dims[0]
        ));
    }
    (n_elems / block_elems)
        .checked_mul(ggml_type.block_bytes() as u64)
        .ok_or_else(|| "the byte size overflows".to_string())
}

/// Writes GGUF files in memory: tiny synthetic models for tests, and hand-made bad files.
///
/// It writes exactly what it is given and validates nothing, so tests can build broken
/// files. Metadata keeps insertion order; array elements are written with the type of the
/// first element (u8 for an empty array). Tensors are laid out in insertion order, each
/// padded to `general.alignment` (32 unless that key is set).
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<WriterTensor>,
}

#[derive(Debug, Clone)]
struct WriterTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    bytes: Vec<u8>,
}

impl GgufWriter {
    pub fn new(version: u32) -> GgufWriter {
        GgufWriter {
            version,
            ..GgufWriter::default()
        }
    }

    pub fn meta(&mut self, key: impl Into<String>, value: impl Into<MetaValue>) -> &mut GgufWriter {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Adds a tensor; `dims` in ggml `ne` order, `bytes` already in the type's block layout.
    pub fn tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        bytes: impl Into<Vec<u8>>,
    ) -> &mut GgufWriter {
        self.tensors.push(WriterTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
            bytes: bytes.into(),
        });
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self
            .metadata
            .iter()
            .rev()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_int())
            .and_then(|a| u64::try_from(a).ok())
            .filter(|a| a.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT) as usize;
        let padded = |n: usize| n.div_ceil(alignment) * alignment;

        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0;
        for t in &self.tensors {
            write_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += padded(t.bytes.len());
        }
        out.resize(padded(out.len()), 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.bytes);
            out.resize(padded(out.len()), 0);
        }
        out
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::String(s) => write_string(out, s),
        MetaValue::Array(items) => {
            let elem_type = items.first().map_or(0, MetaValue::type_id);
            out.extend_from_slice(&elem_type.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GgufWriter {
        let mut w = GgufWriter::new(3);
        w.meta("general.architecture", "llama")
            .meta("llama.block_count", 2u32)
            .meta("some.i8", -3i8)
            .meta("some.f64", 0.5f64)
            .meta("some.list", vec!["a", "bc"])
            .meta("some.ints", vec![1i32, -2, 3])
            .tensor("a", &[4], GgmlType::F32, vec![0u8; 16])
            .tensor("b", &[32, 2], GgmlType::Q8_0, vec![7u8; 68]);
        w
    }

    #[test]
    fn writer_output_parses_back() {
        let g = Gguf::from_bytes(tiny().to_bytes()).expect("tiny file parses");
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 32);
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_u32("llama.block_count").unwrap(), 2);
        assert_eq!(g.get_i64("some.i8").unwrap(), -3);
        assert_eq!(g.get_f32("some.f64").unwrap(), 0.5);
        assert_eq!(g.get_str_array("some.list").unwrap(), vec!["a", "bc"]);
        assert_eq!(g.get_i32_array("some.ints").unwrap(), vec![1, -2, 3]);
        let b = g.tensor("b").expect("tensor b");
        assert_eq!(b.n_bytes, 68);
        assert_eq!(b.n_elems(), 64);
        assert_eq!(b.n_rows(), 2);
        assert_eq!(b.offset % 32, 0);
        assert_eq!(g.tensor_data(b), &[7u8; 68][..]);
        assert_eq!(g.tensor_data(g.tensor("a").unwrap()), &[0u8; 16][..]);
    }

    #[test]
    fn typed_getters_name_the_problem() {
        let g = Gguf::from_bytes(tiny().to_bytes()).expect("tiny file parses");
        assert!(matches!(
            g.get_u32("nope"),
            Err(GgufError::MissingKey { .. })
        ));
        assert!(matches!(
            g.get_u32("general.architecture"),
            Err(GgufError::WrongMetaType { .. })
        ));
        assert!(matches!(
            g.get_u32("some.i8"),
            Err(GgufError::MetaOutOfRange { .. })
        ));
        let e = g.get_str_array("some.ints").unwrap_err();
        assert!(e.to_string().contains("an array of i32"), "{e}");
    }

    #[test]
    fn row_bytes_needs_whole_blocks() {
        assert_eq!(GgmlType::Q4_1.row_bytes(576), Some(360));
        assert_eq!(GgmlType::Q8_0.row_bytes(576), Some(612));
        assert_eq!(GgmlType::Q4_0.row_bytes(33), None);
        assert_eq!(GgmlType::F16.row_bytes(3), Some(6));
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
    }
}
