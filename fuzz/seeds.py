"""Writes a few small valid GGUF files into fuzz/corpus/gguf as seeds for the gguf target.

Standard library only. Layout as in src/model/gguf.rs: header, metadata, tensor infos,
data aligned to 32 bytes.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "gguf")


def string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf(version, meta, tensors, alignment=32):
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(meta))
    for key, vtype, payload in meta:
        out += string(key) + struct.pack("<I", vtype) + payload
    offset = 0
    for name, dims, ggml_type, data in tensors:
        out += string(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ggml_type, offset)
        offset += -(-len(data) // alignment) * alignment
    out += b"\0" * (-len(out) % alignment)
    for _, _, _, data in tensors:
        out += data + b"\0" * (-len(data) % alignment)
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    meta = [
        ("general.architecture", 8, string("llama")),
        ("llama.block_count", 4, struct.pack("<I", 2)),
        ("tokens", 9, struct.pack("<IQ", 8, 2) + string("a") + string("b")),
        ("eps", 6, struct.pack("<f", 1e-5)),
    ]
    tensors = [
        ("f32", [4], 0, struct.pack("<4f", 1, 2, 3, 4)),
        ("f16", [2, 2], 1, struct.pack("<4e", 1, -2, 0.5, 3)),
        ("q4_0", [32], 2, bytes(range(18))),
        ("q4_1", [32, 2], 3, bytes(range(40))),
        ("q8_0", [32], 8, bytes(range(34))),
        ("bf16", [2], 30, b"\x80\x3f\x00\x40"),
    ]
    seeds = {
        "v3_all_types.gguf": gguf(3, meta, tensors),
        "v2_meta_only.gguf": gguf(2, meta, []),
        "v3_one_tensor.gguf": gguf(3, [], tensors[:1]),
        "v3_align64.gguf": gguf(3, [("general.alignment", 4, struct.pack("<I", 64))], tensors[3:5], 64),
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
