#!/usr/bin/env bash
# Puts a long public-domain English text for streaming-perplexity experiments into
# $SINKSTAR_HOME/texts (default ~/.cache/sinkstar/texts):
#   emma.txt    Jane Austen, "Emma" (1815)
#   austen.txt  the six novels in the order emma, persuasion, mansfieldpark, prideprejudice,
#               sensesensibility, northangerabbey, separated by two empty lines
#   SOURCE.txt  package version, .deb sha256 and URL, licenses, sha256 of each text
# The novels come from Debian's r-cran-janeaustenr package (MIT; the texts, from Project
# Gutenberg, are public domain), where they are R data (data/Rdata.rdb + Rdata.rdx);
# scripts/rdata_text.py reads those without R. Each element of R's character vector is one line
# of the book. Does nothing when the texts are already there and match SOURCE.txt.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
home="${SINKSTAR_HOME:-$HOME/.cache/sinkstar}"
out="$home/texts"
pkg=r-cran-janeaustenr
novels=(emma persuasion mansfieldpark prideprejudice sensesensibility northangerabbey)
titles=("EMMA" "Persuasion" "MANSFIELD PARK" "PRIDE AND PREJUDICE" "SENSE AND SENSIBILITY" "NORTHANGER ABBEY")
# The texts as extracted from r-cran-janeaustenr 1.0.0-1 (Debian bookworm). Another package
# version may give other texts: that is reported, not refused.
ref_emma=7c67b5985c6d0de1efaeb5d342d52cb82c38083c40e2295129e30e87ee690ebe
ref_austen=ee8203c8ce36e49a11cd0c527e945c72ede769671f7d17d1b07951d278923e74

show() {
  echo "texts: $out/emma.txt ($(wc -l <"$out/emma.txt") lines, $(wc -m <"$out/emma.txt") characters)" >&2
  echo "texts: $out/austen.txt ($(wc -l <"$out/austen.txt") lines, $(wc -m <"$out/austen.txt") characters)" >&2
  echo "texts: source and sha256 in $out/SOURCE.txt" >&2
}

if [ -s "$out/emma.txt" ] && [ -s "$out/austen.txt" ] && [ -s "$out/SOURCE.txt" ] \
  && [ "$(grep -cE '^[0-9a-f]{64}  (emma|austen)\.txt$' "$out/SOURCE.txt")" = 2 ] \
  && (cd "$out" && grep -E '^[0-9a-f]{64}  ' SOURCE.txt | sha256sum --check --status); then
  echo "texts: present, sha256 ok" >&2
  show
  exit 0
fi

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# apt-get download needs no root; only refresh the package lists when the package is unknown.
if ! (cd "$tmp" && apt-get download -q "$pkg" 2>"$tmp/apt.err" >/dev/null); then
  if apt-cache show "$pkg" >/dev/null 2>&1; then
    cat "$tmp/apt.err" >&2
    echo "texts: apt-get download $pkg failed" >&2
    exit 1
  fi
  echo "texts: $pkg unknown to apt, running apt-get update" >&2
  $sudo apt-get update -q >&2
  (cd "$tmp" && apt-get download -q "$pkg" >/dev/null)
fi
deb=$(ls "$tmp"/"$pkg"_*.deb)
version=$(dpkg-deb -f "$deb" Version)
deb_sha=$(sha256sum "$deb" | cut -d' ' -f1)
uri=$(apt-get download --print-uris "$pkg" 2>/dev/null | awk 'NR==1 {gsub("\x27", "", $1); print $1}' || true)
echo "texts: $pkg $version ($(basename "$deb"), sha256 $deb_sha)" >&2

dpkg-deb -x "$deb" "$tmp/x"
rdb=$(find "$tmp/x" -path '*/janeaustenr/data/Rdata.rdb' | head -n 1)
[ -n "$rdb" ] || { echo "texts: no janeaustenr/data/Rdata.rdb in $(basename "$deb")" >&2; exit 1; }
data=$(dirname "$rdb")
python3 "$here/rdata_text.py" "$data" --list >"$tmp/objects"
for n in "${novels[@]}"; do
  grep -q "^$n	character\[" "$tmp/objects" || {
    echo "texts: no character vector '$n' in $rdb; objects:" >&2; cat "$tmp/objects" >&2; exit 1; }
done

mkdir -p "$tmp/texts"
python3 "$here/rdata_text.py" "$data" --object emma --out "$tmp/texts/emma.txt"
args=()
for n in "${novels[@]}"; do args+=(--object "$n"); done
python3 "$here/rdata_text.py" "$data" "${args[@]}" --out "$tmp/texts/austen.txt"

# Checks: big enough, the expected first line, every title present as a line, valid UTF-8.
check() {  # file min_lines
  local f="$1" min="$2" lines
  lines=$(wc -l <"$f")
  [ "$lines" -ge "$min" ] || { echo "texts: $f has only $lines lines" >&2; exit 1; }
  [ "$(head -n 1 "$f")" = "EMMA" ] || { echo "texts: $f does not start with EMMA" >&2; exit 1; }
  iconv -f UTF-8 -t UTF-8 "$f" >/dev/null || { echo "texts: $f is not valid UTF-8" >&2; exit 1; }
}
check "$tmp/texts/emma.txt" 10000
check "$tmp/texts/austen.txt" 60000
for t in "${titles[@]}"; do
  grep -qx "$t" "$tmp/texts/austen.txt" || { echo "texts: no title line '$t' in austen.txt" >&2; exit 1; }
done

sha_emma=$(sha256sum "$tmp/texts/emma.txt" | cut -d' ' -f1)
sha_austen=$(sha256sum "$tmp/texts/austen.txt" | cut -d' ' -f1)
for pair in "emma.txt $sha_emma $ref_emma" "austen.txt $sha_austen $ref_austen"; do
  set -- $pair
  [ "$2" = "$3" ] || echo "texts: WARNING: $1 differs from the reference extraction of $pkg 1.0.0-1" \
    "(sha256 $2, reference $3): numbers measured on it are not comparable" >&2
done

copyright=$(find "$tmp/x" -path "*/doc/$pkg/copyright" | head -n 1)
{
  echo "# Texts for sinkstar's streaming-perplexity experiments, written by scripts/fetch-text.sh."
  echo "package: $pkg $version (Debian), $(basename "$deb"), sha256 $deb_sha"
  [ -z "$uri" ] || echo "url: $uri"
  echo "data: ${rdb#"$tmp/x"} (R lazy-load database, read with scripts/rdata_text.py)"
  echo "license: package MIT (debian/copyright: Files: *, Copyright: 2016-2017 Julia Silge, License: MIT);"
  echo "  the novels of Jane Austen (1775-1817) are public domain; the package's help pages say"
  echo "  \"The UTF-8 plain text was sourced from Project Gutenberg\". debian/copyright: $pkg.copyright"
  echo "emma.txt: R object emma, one element a line"
  echo "austen.txt: R objects ${novels[*]}, in this order, separated by two empty lines"
  echo "$sha_emma  emma.txt"
  echo "$sha_austen  austen.txt"
} >"$tmp/texts/SOURCE.txt"
[ -z "$copyright" ] || cp "$copyright" "$tmp/texts/$pkg.copyright"

mkdir -p "$out"
for f in emma.txt austen.txt "$pkg.copyright" SOURCE.txt; do
  if [ -f "$tmp/texts/$f" ]; then mv "$tmp/texts/$f" "$out/$f"; fi
done
show
