# shellcheck shell=sh
# Release metadata for BusyBox sh, sourced by /usr/sbin/jetkvm-ota: semver
# precedence, and release.json read strictly. scripts/build/build-ota writes
# release.json one "key": value per line, and signs it (release.json.sig);
# it is read only after that signature verified, and still only in that
# shape: anything else is refused, never guessed at.

# semver_valid V: whether V is a semantic version (build metadata allowed).
semver_valid() {
	printf '%s\n' "$1" | grep -Eqx '(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?'
}

# semver_cmp A B: prints -1, 0 or 1 as A's precedence is lower than, equal
# to or higher than B's (semver 2.0.0 section 11: build metadata ignored; a
# pre-release is lower than its release; pre-release identifiers compared
# one by one, numbers numerically and below words, words in ASCII order, a
# longer list higher when all before are equal). Both must be valid.
semver_cmp() {
	awk -v a="$1" -v b="$2" '
	# Digits of any length, compared without converting to numbers.
	function num(x, y) {
		sub(/^0+/, "", x); sub(/^0+/, "", y)
		if (length(x) != length(y)) return length(x) < length(y) ? -1 : 1
		return (x "") < (y "") ? -1 : ((x "") > (y "") ? 1 : 0)
	}
	function ident(x, y,   xn, yn) {
		xn = x ~ /^[0-9]+$/; yn = y ~ /^[0-9]+$/
		if (xn && yn) return num(x, y)
		if (xn != yn) return xn ? -1 : 1
		return (x "") < (y "") ? -1 : ((x "") > (y "") ? 1 : 0)
	}
	function cmp(x, y,   i, r, xp, yp, xc, yc, xa, ya, n, m) {
		sub(/\+.*/, "", x); sub(/\+.*/, "", y)
		xp = ""; yp = ""
		if ((i = index(x, "-")) > 0) { xp = substr(x, i + 1); x = substr(x, 1, i - 1) }
		if ((i = index(y, "-")) > 0) { yp = substr(y, i + 1); y = substr(y, 1, i - 1) }
		split(x, xc, "."); split(y, yc, ".")
		for (i = 1; i <= 3; i++) if ((r = num(xc[i], yc[i])) != 0) return r
		if (xp == "" && yp == "") return 0
		if (xp == "") return 1
		if (yp == "") return -1
		n = split(xp, xa, "."); m = split(yp, ya, ".")
		for (i = 1; i <= n && i <= m; i++) if ((r = ident(xa[i], ya[i])) != 0) return r
		return n < m ? -1 : (n > m ? 1 : 0)
	}
	BEGIN { print cmp(a, b) }'
}

# release_field FILE KEY: the value of KEY (quotes removed), or nothing.
release_field() {
	sed -n -e "s/^  \"$2\": \"\([^\"]*\)\",\{0,1\}\$/\1/p" -e "s/^  \"$2\": \([0-9][0-9]*\),\{0,1\}\$/\1/p" "$1"
}

# release_read FILE: checks the whole file's shape and every field the
# update needs, then sets REL_VERSION, REL_URL, REL_SIG_URL, REL_HASH,
# REL_SIZE and REL_EXPIRES. On a problem, prints it and returns 1.
release_read() {
	f="$1"
	# Printable ASCII lines only, each "{", "}" or one "key": value.
	if [ "$(head -n 1 "$f")" != "{" ] || [ "$(tail -n 1 "$f")" != "}" ] ||
		[ -n "$(tr -d '\n\040-\176' <"$f" | head -c 1)" ] ||
		grep -Evx '\{|\}|  "[A-Za-z][A-Za-z0-9]*": ("[^"\\]*"|[0-9]+),?' "$f" >/dev/null; then
		echo "release.json is not in the form build-ota writes"
		return 1
	fi
	dup="$(sed -n 's/^  "\([A-Za-z0-9]*\)": .*/\1/p' "$f" | sort | uniq -d | head -n 1)"
	[ -z "$dup" ] || { echo "release.json names $dup twice"; return 1; }
	REL_VERSION="$(release_field "$f" systemVersion)"
	REL_URL="$(release_field "$f" systemUrl)"
	REL_SIG_URL="$(release_field "$f" systemSigUrl)"
	REL_HASH="$(release_field "$f" systemHash)"
	REL_SIZE="$(release_field "$f" systemSize)"
	REL_EXPIRES="$(release_field "$f" expires)"
	semver_valid "$REL_VERSION" || { echo "release.json: systemVersion is missing or not semver"; return 1; }
	printf '%s\n' "$REL_HASH" | grep -Eqx '[0-9a-f]{64}' ||
		{ echo "release.json: systemHash is missing or not a SHA-256"; return 1; }
	# The size bounds the download and is checked against the partitions:
	# without it nothing is downloaded.
	printf '%s\n' "$REL_SIZE" | grep -Eqx '[1-9][0-9]{0,11}' ||
		{ echo "release.json: systemSize is missing or not a byte count"; return 1; }
	printf '%s\n' "$REL_EXPIRES" | grep -Eqx '[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z' ||
		{ echo "release.json: expires is missing or not a UTC time (YYYY-MM-DDThh:mm:ssZ)"; return 1; }
	for u in "$REL_URL" "$REL_SIG_URL"; do
		release_url_ok "$u" || { echo "release.json: ${u:-an empty URL} is not an http(s) URL or a file name"; return 1; }
	done
}

# release_url_ok U: an http:// or https:// URL of printable characters, or
# a plain file name (beside release.json). Never an option, another
# scheme, or a path.
release_url_ok() {
	case "$1" in
		http://?* | https://?*) printf '%s\n' "$1" | grep -Eqx 'https?://[!-~]+' ;;
		*) printf '%s\n' "$1" | grep -Eqx '[A-Za-z0-9_][A-Za-z0-9._]*' ;;
	esac
}

# release_resolve BASE U: U, or the name U beside the URL BASE.
release_resolve() {
	case "$2" in
		http://* | https://*) echo "$2" ;;
		*) echo "${1%/*}/$2" ;;
	esac
}

# release_expiry_seconds E: the expiry as seconds since the epoch.
release_expiry_seconds() {
	date -u -D '%Y-%m-%dT%H:%M:%SZ' -d "$1" +%s 2>/dev/null
}
