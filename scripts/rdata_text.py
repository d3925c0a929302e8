#!/usr/bin/env python3
"""Reads R data objects without R: R's XDR serialization and R's lazy-load databases.

Used by scripts/fetch-text.sh to turn the Jane Austen novels that Debian's r-cran-janeaustenr
package ships as R data into plain UTF-8 text. Standard library only.

Formats (checked against the files of r-cran-janeaustenr 1.0.0-1, written by R 4.2.1):
  * serialization: "X\\n" (XDR, big-endian), then int version (2 or 3), int writer R version,
    int minimal reader R version, and for version 3 the native encoding (int length + bytes).
    Then one item: int flags (type in bits 0-7, object bit 8, attribute bit 9, tag bit 10,
    gp "levels" in bits 12-27; REFSXP packs its reference index into bits 8-31) and a
    type-specific body.
  * .rds / .rdx files: one serialization, gzip-compressed (saveRDS default; bzip2, xz or none
    are detected too).
  * lazy-load database NAME.rdx + NAME.rdb: the .rdx is an .rds file holding
    list(variables = list(<name> = c(offset, length), ...), references = list(...),
    compressed = TRUE | 2 | 3). The .rdb record at [offset, offset + length) is a 4-byte
    big-endian length of the UNcompressed serialization followed by its compressed bytes:
    compressed TRUE/1 -> zlib stream; 2 -> one type byte ('2' bzip2, '1' zlib, '0' stored),
    then the data; 3 -> type byte ('Z' raw LZMA2, '2', '1', '0'), then the data.

Objects come back as Python values: RVector (a list subclass with .rtype and .attrs) for
vectors and pairlists, str / None (NA_character_) for CHARSXP, RSymbol for symbols, RSpecial for
the environments and markers R writes as single flags. Anything else raises RDataError naming
the SEXP type.

CLI:
  rdata_text.py DATA_DIR --list                 list the objects of DATA_DIR/Rdata.rdx|.rdb
  rdata_text.py DATA_DIR --object emma --out F  write a character vector as text, one element a
                                                line ("\\n"-joined, final "\\n"); repeat --object
                                                to write several, separated by two empty lines
  rdata_text.py --self-test                     check the reader on hand-built bytes
"""
import argparse
import bz2
import gzip
import lzma
import os
import struct
import sys
import tempfile
import zlib

SEXP_NAMES = {
    0: "NILSXP", 1: "SYMSXP", 2: "LISTSXP", 3: "CLOSXP", 4: "ENVSXP", 5: "PROMSXP",
    6: "LANGSXP", 7: "SPECIALSXP", 8: "BUILTINSXP", 9: "CHARSXP", 10: "LGLSXP",
    13: "INTSXP", 14: "REALSXP", 15: "CPLXSXP", 16: "STRSXP", 17: "DOTSXP", 18: "ANYSXP",
    19: "VECSXP", 20: "EXPRSXP", 21: "BCODESXP", 22: "EXTPTRSXP", 23: "WEAKREFSXP",
    24: "RAWSXP", 25: "S4SXP",
    # pseudo-types that only occur in serialized streams
    238: "ALTREP_SXP", 239: "ATTRLISTSXP", 240: "ATTRLANGSXP", 241: "BASEENV_SXP",
    242: "EMPTYENV_SXP", 243: "BCREPREF", 244: "BCREPDEF", 245: "GENERICREFSXP",
    246: "CLASSREFSXP", 247: "PERSISTSXP", 248: "PACKAGESXP", 249: "NAMESPACESXP",
    250: "BASENAMESPACE_SXP", 251: "MISSINGARG_SXP", 252: "UNBOUNDVALUE_SXP",
    253: "GLOBALENV_SXP", 254: "NILVALUE_SXP", 255: "REFSXP",
}
T = {v: k for k, v in SEXP_NAMES.items()}

IS_OBJECT_BIT = 1 << 8
HAS_ATTR_BIT = 1 << 9
HAS_TAG_BIT = 1 << 10
# CHARSXP encoding flags, in the gp "levels" (flags >> 12)
BYTES_MASK, LATIN1_MASK, UTF8_MASK, ASCII_MASK = 1 << 1, 1 << 2, 1 << 3, 1 << 6
NA_INTEGER = -(2 ** 31)
NA_REAL_LOW_WORD = 1954  # R's NA_real_ is a NaN whose low 32 bits are 1954

PAIRLIST_TYPES = ("LISTSXP", "LANGSXP", "ATTRLISTSXP", "ATTRLANGSXP")
SPECIAL_TYPES = ("NILVALUE_SXP", "EMPTYENV_SXP", "BASEENV_SXP", "GLOBALENV_SXP",
                 "UNBOUNDVALUE_SXP", "MISSINGARG_SXP", "BASENAMESPACE_SXP")


class RDataError(Exception):
    pass


class RSymbol:
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return "RSymbol(%r)" % self.name

    def __eq__(self, other):
        return isinstance(other, RSymbol) and other.name == self.name

    def __hash__(self):
        return hash(("RSymbol", self.name))


class RSpecial:
    """R_GlobalEnv, R_EmptyEnv, R_MissingArg and friends: only their name is kept."""
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return "RSpecial(%r)" % self.name


class RVector(list):
    """An R vector (elements in the list) or pairlist (elements are (tag, value) pairs, tag a
    str or None). .rtype is the SEXP type name, .attrs maps attribute names to values."""

    def __init__(self, rtype, items=(), attrs=None):
        super().__init__(items)
        self.rtype = rtype
        self.attrs = attrs or {}

    def __repr__(self):
        body = list.__repr__(self)
        if len(body) > 200:
            body = body[:200] + "...]"
        return "RVector(%s, %s%s)" % (self.rtype, body,
                                      ", attrs=%r" % self.attrs if self.attrs else "")

    @property
    def names(self):
        n = self.attrs.get("names")
        return list(n) if n is not None else None

    @property
    def r_class(self):
        c = self.attrs.get("class")
        return list(c) if c is not None else []

    def get(self, name):
        """Element `name` of a named list / vector."""
        names = self.names
        if names is None or name not in names:
            raise KeyError(name)
        return self[names.index(name)]


def _decompress_whole(data):
    """A whole .rds file: gzip (saveRDS default), bzip2, xz or stored."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


class Unserializer:
    def __init__(self, data):
        self.buf = memoryview(data)
        self.pos = 0
        self.refs = []
        self.native_encoding = None
        self._header()

    # -- primitives -------------------------------------------------------------------------
    def _take(self, n):
        if n < 0 or self.pos + n > len(self.buf):
            raise RDataError("truncated serialization: need %d bytes at offset %d of %d"
                             % (n, self.pos, len(self.buf)))
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def int(self):
        return struct.unpack(">i", self._take(4))[0]

    def length(self):
        n = self.int()
        if n == -1:  # long vector: two more ints
            hi, lo = struct.unpack(">II", self._take(8))
            return (hi << 32) + lo
        if n < 0:
            raise RDataError("negative vector length %d at offset %d" % (n, self.pos - 4))
        return n

    def _header(self):
        if bytes(self.buf[:5]) in (b"RDX2\n", b"RDX3\n"):  # save() files
            self.pos = 5
        fmt = bytes(self._take(2))
        if fmt != b"X\n":
            kind = {b"A\n": "ASCII", b"B\n": "native binary"}.get(fmt, repr(fmt))
            raise RDataError("unsupported serialization format %s (only XDR 'X\\n' is read)" % kind)
        self.version = self.int()
        self.writer_version = self.int()
        self.min_reader_version = self.int()
        if self.version == 3:
            n = self.int()
            self.native_encoding = bytes(self._take(n)).decode("ascii", "replace")
        elif self.version != 2:
            raise RDataError("unsupported serialization version %d (2 and 3 are read)"
                             % self.version)

    # -- items ------------------------------------------------------------------------------
    def read(self):
        value = self.item()
        if self.pos != len(self.buf):
            raise RDataError("%d trailing bytes after the serialized object"
                             % (len(self.buf) - self.pos))
        return value

    def item(self):
        return self._item(self.int())

    def _type_name(self, flags):
        t = flags & 0xFF
        return SEXP_NAMES.get(t, "unknown SEXP type %d" % t)

    def _item(self, flags):
        name = self._type_name(flags)
        has_attr = bool(flags & HAS_ATTR_BIT)
        if name == "NILVALUE_SXP":
            return None
        if name in SPECIAL_TYPES:
            return RSpecial(name)
        if name == "REFSXP":
            idx = flags >> 8
            if idx == 0:
                idx = self.int()
            if not 1 <= idx <= len(self.refs):
                raise RDataError("REFSXP back-reference %d outside the table of %d"
                                 % (idx, len(self.refs)))
            return self.refs[idx - 1]
        if name == "SYMSXP":
            pname = self.item()  # a CHARSXP
            sym = RSymbol(pname)
            self.refs.append(sym)
            return sym
        if name in PAIRLIST_TYPES:
            return self._pairlist(flags)
        if name == "CHARSXP":
            return self._charsxp(flags)
        if name == "ALTREP_SXP":
            return self._altrep()
        if name in ("LGLSXP", "INTSXP"):
            n = self.length()
            raw = struct.unpack(">%di" % n, self._take(4 * n))
            if name == "LGLSXP":
                vals = [None if v == NA_INTEGER else bool(v) for v in raw]
            else:
                vals = [None if v == NA_INTEGER else v for v in raw]
            return self._vector(name, vals, has_attr)
        if name == "REALSXP":
            n = self.length()
            return self._vector(name, self._doubles(n), has_attr)
        if name == "CPLXSXP":
            n = self.length()
            d = self._doubles(2 * n)
            vals = [None if d[2 * i] is None or d[2 * i + 1] is None
                    else complex(d[2 * i], d[2 * i + 1]) for i in range(n)]
            return self._vector(name, vals, has_attr)
        if name == "RAWSXP":
            n = self.length()
            return self._vector(name, bytes(self._take(n)), has_attr)
        if name == "STRSXP":
            n = self.length()
            vals = []
            for _ in range(n):
                f = self.int()
                if self._type_name(f) != "CHARSXP":
                    raise RDataError("STRSXP element is %s, expected CHARSXP" % self._type_name(f))
                vals.append(self._charsxp(f))
            return self._vector(name, vals, has_attr)
        if name in ("VECSXP", "EXPRSXP"):
            n = self.length()
            vals = [self.item() for _ in range(n)]
            return self._vector(name, vals, has_attr)
        raise RDataError("unsupported SEXP type %s (flags 0x%08x at offset %d)"
                         % (name, flags & 0xFFFFFFFF, self.pos - 4))

    def _doubles(self, n):
        raw = self._take(8 * n)
        vals = list(struct.unpack(">%dd" % n, raw))
        for i, v in enumerate(vals):
            if v != v and struct.unpack_from(">I", raw, 8 * i + 4)[0] == NA_REAL_LOW_WORD:
                vals[i] = None  # NA_real_ (plain NaN stays float('nan'))
        return vals

    def _vector(self, rtype, vals, has_attr):
        v = RVector(rtype, vals)
        if has_attr:
            v.attrs = self._attributes()
        return v

    def _attributes(self):
        a = self.item()
        if a is None:
            return {}
        if not isinstance(a, RVector) or a.rtype not in PAIRLIST_TYPES:
            raise RDataError("attributes are a %s, expected a pairlist" % type(a).__name__)
        return {tag: value for tag, value in a}

    def _charsxp(self, flags):
        n = self.int()
        if n == -1:
            return None  # NA_character_
        raw = bytes(self._take(n))
        levels = flags >> 12
        if levels & BYTES_MASK:
            return raw  # declared as bytes: left undecoded
        if levels & LATIN1_MASK:
            return raw.decode("latin-1")
        if levels & (UTF8_MASK | ASCII_MASK):
            return raw.decode("utf-8")
        # native encoding of the writer
        enc = (self.native_encoding or "").lower().replace("_", "-")
        if enc in ("latin1", "iso-8859-1", "iso8859-1", "cp1252"):
            return raw.decode("cp1252" if enc == "cp1252" else "latin-1")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            if self.native_encoding and self.native_encoding.upper() not in ("UTF-8", "UTF8"):
                try:
                    return raw.decode(self.native_encoding)
                except (LookupError, UnicodeDecodeError):
                    pass
            return raw.decode("latin-1")

    def _pairlist(self, flags):
        """LISTSXP / LANGSXP chains, read iteratively along the CDRs. The attributes of the
        first cell are the pairlist's; tags must be symbols."""
        head_type = self._type_name(flags)
        out = RVector("LANGSXP" if head_type in ("LANGSXP", "ATTRLANGSXP") else "LISTSXP")
        first = True
        while True:
            name = self._type_name(flags)
            has_attr = bool(flags & HAS_ATTR_BIT) or name in ("ATTRLISTSXP", "ATTRLANGSXP")
            if has_attr:
                attrs = self._attributes()
                if first:
                    out.attrs = attrs
            tag = None
            if flags & HAS_TAG_BIT:
                t = self.item()
                if isinstance(t, RSymbol):
                    tag = t.name
                elif t is not None:
                    raise RDataError("pairlist tag is a %s, expected a symbol" % type(t).__name__)
            out.append((tag, self.item()))
            first = False
            flags = self.int()
            name = self._type_name(flags)
            if name == "NILVALUE_SXP":
                return out
            if name not in PAIRLIST_TYPES:
                raise RDataError("pairlist ends in a %s (dotted pairs are not supported)" % name)

    def _altrep(self):
        info = self.item()  # pairlist: class symbol, package symbol, base type
        state = self.item()
        attrs = self.item()
        try:
            cls = info[0][1].name
        except (TypeError, IndexError, AttributeError):
            raise RDataError("malformed ALTREP_SXP class info %r" % (info,))
        if cls in ("compact_intseq", "compact_realseq"):
            n, start, step = state
            n = int(n)
            vals = [start + i * step for i in range(n)]
            v = RVector("INTSXP" if cls == "compact_intseq" else "REALSXP",
                        [int(x) for x in vals] if cls == "compact_intseq" else vals)
        elif cls.startswith("wrap_"):
            v = state[0]  # list(x, metadata)
            if not isinstance(v, RVector):
                raise RDataError("ALTREP %s wraps a %s" % (cls, type(v).__name__))
            v = RVector(v.rtype, v, dict(v.attrs))
        else:
            raise RDataError("unsupported SEXP type ALTREP_SXP of class %s" % cls)
        if attrs is not None:
            v.attrs = {tag: value for tag, value in attrs}
        return v


def unserialize(data):
    """One R object from XDR serialization bytes (uncompressed)."""
    return Unserializer(data).read()


def read_rds(path):
    with open(path, "rb") as f:
        return unserialize(_decompress_whole(f.read()))


def _decompress_record(rec, compressed):
    if len(rec) < 4:
        raise RDataError("lazy-load record of %d bytes is too short" % len(rec))
    outlen = struct.unpack(">I", rec[:4])[0]
    if compressed in (2, 3):
        kind, body = rec[4:5], rec[5:]
        if kind == b"0":
            out = body
        elif kind == b"1":
            out = zlib.decompress(body)
        elif kind == b"2":
            out = bz2.decompress(body)
        elif kind == b"Z" and compressed == 3:
            # R's init_filters(): raw LZMA2, preset 9 | extreme (only dict_size matters to decode)
            out = lzma.decompress(body, format=lzma.FORMAT_RAW, filters=[
                {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])
        else:
            raise RDataError("unknown lazy-load compression type byte %r (compressed=%d)"
                             % (kind, compressed))
    elif compressed:
        out = zlib.decompress(rec[4:])
    else:
        return rec
    if len(out) != outlen:
        raise RDataError("lazy-load record decompressed to %d bytes, header says %d"
                         % (len(out), outlen))
    return out


class LazyLoadDB:
    """R lazy-load database BASE.rdx (index) + BASE.rdb (records)."""

    def __init__(self, base):
        self.base = base
        index = read_rds(base + ".rdx")
        if not isinstance(index, RVector) or index.rtype != "VECSXP":
            raise RDataError("%s.rdx: index is not a list" % base)
        self.variables = index.get("variables")
        self.references = index.get("references")
        comp = index.get("compressed")
        self.compressed = 0 if comp[0] is None else int(comp[0])
        self.keys = {}
        for name, key in zip(self.variables.names or [], self.variables):
            if not isinstance(key, RVector) or len(key) != 2:
                raise RDataError("%s.rdx: key of %r is %r, expected c(offset, length)"
                                 % (base, name, key))
            self.keys[name] = (int(key[0]), int(key[1]))

    def names(self):
        return list(self.keys)

    def raw(self, name):
        if name not in self.keys:
            raise RDataError("no object %r in %s.rdb (objects: %s)"
                             % (name, self.base, ", ".join(self.keys)))
        offset, length = self.keys[name]
        with open(self.base + ".rdb", "rb") as f:
            f.seek(offset)
            rec = f.read(length)
        if len(rec) != length:
            raise RDataError("%s.rdb: record of %r is truncated" % (self.base, name))
        return _decompress_record(rec, self.compressed)

    def fetch(self, name):
        return unserialize(self.raw(name))


def find_db(path):
    """DATA_DIR (holding Rdata.rdx), a package root (data/Rdata.rdx), or a .rdx/.rdb path."""
    if path.endswith((".rdx", ".rdb")):
        return path[:-4]
    for cand in (os.path.join(path, "Rdata"), os.path.join(path, "data", "Rdata")):
        if os.path.isfile(cand + ".rdx") and os.path.isfile(cand + ".rdb"):
            return cand
    if os.path.isfile(path + ".rdx"):
        return path
    raise RDataError("no Rdata.rdx + Rdata.rdb in %s (nor in %s/data)" % (path, path))


def describe(obj):
    if obj is None:
        return "NULL"
    if isinstance(obj, RVector):
        kind = {"STRSXP": "character", "INTSXP": "integer", "REALSXP": "double",
                "LGLSXP": "logical", "VECSXP": "list", "CPLXSXP": "complex",
                "RAWSXP": "raw", "LISTSXP": "pairlist"}.get(obj.rtype, obj.rtype)
        cls = obj.r_class
        s = "%s[%d]" % (kind, len(obj))
        if cls:
            s += " class=" + "/".join(cls)
        if obj.rtype == "STRSXP" and len(obj):
            first = obj[0]
            s += " first=%r" % (first if first is None or len(first) < 60 else first[:60] + "...")
        return s
    return type(obj).__name__


def text_lines(obj, name="object"):
    """The lines of a character vector (or factor). NA becomes an empty line."""
    if isinstance(obj, RVector) and obj.rtype == "INTSXP" and "factor" in obj.r_class:
        levels = obj.attrs["levels"]
        return ["" if i is None else levels[i - 1] for i in obj]
    if not isinstance(obj, RVector) or obj.rtype != "STRSXP":
        raise RDataError("%s is %s, not a character vector" % (name, describe(obj)))
    lines = []
    for s in obj:
        if s is None:
            s = ""
        elif isinstance(s, bytes):
            raise RDataError("%s holds a string marked as bytes (unknown encoding): %r"
                             % (name, s[:40]))
        if "\n" in s or "\r" in s:
            raise RDataError("%s has an element with a line break: %r" % (name, s[:60]))
        lines.append(s)
    return lines


# -- self-test ---------------------------------------------------------------------------------

def _i(*v):
    return struct.pack(">%di" % len(v), *v)


def _hdr(version=3, enc=b"UTF-8"):
    h = b"X\n" + _i(version, 0x040201, 0x030500)
    return h + (_i(len(enc)) + enc if version == 3 else b"")


def _chr(s, levels=0x40 << 12):
    if s is None:
        return _i(9, -1)
    b = s.encode("utf-8") if isinstance(s, str) else s
    return _i(9 | levels) + _i(len(b)) + b


def _sym(name):
    return _i(1) + _chr(name)


NIL = _i(254)


def self_test():
    checks = 0

    def eq(got, want, what):
        nonlocal checks
        if got != want:
            raise AssertionError("%s: got %r, want %r" % (what, got, want))
        checks += 1

    # 1. character vector: ASCII, UTF-8 and latin-1 flagged strings, an empty string, NA
    utf8 = 1 << 3 << 12
    latin1 = 1 << 2 << 12
    data = (_hdr() + _i(16, 5) + _chr("EMMA") + _chr("") + _chr("caf\u00e9", utf8)
            + _chr(b"na\xefve", latin1) + _chr(None))
    v = unserialize(data)
    eq(v.rtype, "STRSXP", "character vector type")
    eq(list(v), ["EMMA", "", "caf\u00e9", "na\u00efve", None], "character vector")
    eq(text_lines(v), ["EMMA", "", "caf\u00e9", "na\u00efve", ""], "text lines")

    # 2. version-2 stream: no native encoding in the header
    v = unserialize(_hdr(version=2) + _i(16, 1) + _chr("x"))
    eq(list(v), ["x"], "version 2 stream")

    # 3. the shape of a lazy-load .rdx index (as R writes it): a list with a names attribute,
    #    where the second use of the symbol `names` is a REFSXP back-reference (index 1, packed
    #    into the flags: (1 << 8) | 255), plus integer keys, an empty list and a logical.
    names_attr = lambda first: (_i(0x402) + (_sym("names") if first else _i(0x1FF)))
    variables = (_i(0x213, 2) + _i(13, 2, 0, 100) + _i(13, 2, 100, 50)
                 + names_attr(True) + _i(16, 2) + _chr("emma") + _chr("persuasion") + NIL)
    index = (_hdr() + _i(0x213, 3) + variables + _i(0x13, 0) + _i(10, 1, 1)
             + names_attr(False) + _i(16, 3) + _chr("variables") + _chr("references")
             + _chr("compressed") + NIL)
    v = unserialize(index)
    eq(v.names, ["variables", "references", "compressed"], "list names")
    eq(v.get("variables").names, ["emma", "persuasion"], "nested list names via REFSXP")
    eq([list(k) for k in v.get("variables")], [[0, 100], [100, 50]], "integer vectors")
    eq(list(v.get("compressed")), [True], "logical vector")
    eq(len(v.get("references")), 0, "empty list")

    # 4. numbers: NA_integer_, NA_real_ vs NaN, logical NA, a long-vector length prefix
    na_real = struct.pack(">II", 0x7FF00000, NA_REAL_LOW_WORD)
    data = _hdr() + _i(13, 3, 1, NA_INTEGER, -7)
    eq(list(unserialize(data)), [1, None, -7], "integer NA")
    data = _hdr() + _i(14, 3) + struct.pack(">d", 1.5) + na_real + struct.pack(">d", float("nan"))
    r = unserialize(data)
    eq((r[0], r[1], r[2] != r[2]), (1.5, None, True), "real NA and NaN")
    eq(list(unserialize(_hdr() + _i(10, 3, 0, 1, NA_INTEGER))), [False, True, None], "logical NA")
    eq(list(unserialize(_hdr() + _i(16, -1, 0, 1) + _chr("long"))), ["long"], "long length")

    # 5. a data frame: list with names, class and compact row.names c(NA, -2); a factor column
    #    whose attribute pairlist reuses the symbol `class` through a REFSXP (index 2)
    fac = (_i(13 | HAS_ATTR_BIT | IS_OBJECT_BIT, 2, 2, 1)
           + _i(0x402) + _sym("levels") + _i(16, 2) + _chr("a") + _chr("b")
           + _i(0x402) + _sym("class") + _i(16, 1) + _chr("factor") + NIL)
    df = (_hdr() + _i(19 | HAS_ATTR_BIT | IS_OBJECT_BIT, 2) + fac + _i(16, 2) + _chr("x")
          + _chr("y")
          + _i(0x402) + _sym("names") + _i(16, 2) + _chr("f") + _chr("s")
          + _i(0x402) + _i((2 << 8) | 255) + _i(16, 1) + _chr("data.frame")
          + _i(0x402) + _sym("row.names") + _i(13, 2, NA_INTEGER, -2) + NIL)
    v = unserialize(df)
    eq(v.r_class, ["data.frame"], "data frame class via REFSXP")
    eq(v.names, ["f", "s"], "data frame names")
    eq(text_lines(v.get("f")), ["b", "a"], "factor levels")
    eq(list(v.attrs["row.names"]), [None, -2], "compact row names")

    # 6. unsupported types name themselves
    try:
        unserialize(_hdr() + _i(4, 0))
        raise AssertionError("ENVSXP was accepted")
    except RDataError as e:
        eq("ENVSXP" in str(e), True, "error names the SEXP type")
    try:
        text_lines(unserialize(_hdr() + _i(13, 1, 5)), "n")
        raise AssertionError("integer vector taken as text")
    except RDataError as e:
        eq("not a character vector" in str(e), True, "text of a non-character object")

    # 7. a whole lazy-load database on disk: gzip .rdx + zlib records in the .rdb, also the
    #    type-byte variants of compress = 2 and 3
    book = _hdr() + _i(16, 3) + _chr("TITLE") + _chr("") + _chr("The end.")
    other = _hdr() + _i(16, 1) + _chr("x")
    for compressed in (1, 2, 3):
        def record(s):
            if compressed == 1:
                body = zlib.compress(s)
            elif compressed == 2:
                body = b"2" + bz2.compress(s)
            else:
                body = b"1" + zlib.compress(s)
            return struct.pack(">I", len(s)) + body
        r1, r2 = record(book), record(other)
        variables = (_i(0x213, 2) + _i(13, 2, 0, len(r1)) + _i(13, 2, len(r1), len(r2))
                     + names_attr(True) + _i(16, 2) + _chr("book") + _chr("other") + NIL)
        comp = _i(10, 1, 1) if compressed == 1 else _i(13, 1, compressed)
        index = (_hdr() + _i(0x213, 3) + variables + _i(0x13, 0) + comp
                 + names_attr(False) + _i(16, 3) + _chr("variables") + _chr("references")
                 + _chr("compressed") + NIL)
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "Rdata.rdb"), "wb") as f:
                f.write(r1 + r2)
            with open(os.path.join(d, "Rdata.rdx"), "wb") as f:
                f.write(gzip.compress(index))
            db = LazyLoadDB(find_db(d))
            eq(db.names(), ["book", "other"], "lazy-load names (compressed=%d)" % compressed)
            eq(text_lines(db.fetch("book")), ["TITLE", "", "The end."],
               "lazy-load fetch (compressed=%d)" % compressed)
            eq(list(db.fetch("other")), ["x"], "second record (compressed=%d)" % compressed)
    return checks


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", nargs="?", help="directory with Rdata.rdx + Rdata.rdb "
                   "(or a package root, or the .rdx/.rdb path)")
    p.add_argument("--list", action="store_true", help="list the objects")
    p.add_argument("--object", action="append", default=[],
                   help="object to write as text (repeatable; joined by two empty lines)")
    p.add_argument("--out", default="-", help="output file (default: stdout)")
    p.add_argument("--self-test", action="store_true", help="check the reader and exit")
    a = p.parse_args(argv)

    if a.self_test:
        n = self_test()
        print("rdata_text self-test: %d checks passed" % n)
        return 0
    if not a.data_dir or not (a.list or a.object):
        p.error("give DATA_DIR and --list or --object NAME (or --self-test)")
    try:
        db = LazyLoadDB(find_db(a.data_dir))
        if a.list:
            for name in db.names():
                print("%s\t%s" % (name, describe(db.fetch(name))))
        if a.object:
            texts = []
            for name in a.object:
                lines = text_lines(db.fetch(name), name)
                texts.append("\n".join(lines) + "\n")
            text = "\n\n".join(texts)
            if a.out == "-":
                sys.stdout.write(text)
            else:
                tmp = a.out + ".part"
                with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                    f.write(text)
                os.replace(tmp, a.out)
    except BrokenPipeError:
        sys.stderr.close()  # output cut short by the reader (e.g. `| head`)
    except (RDataError, OSError, zlib.error, KeyError) as e:
        print("rdata_text: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
