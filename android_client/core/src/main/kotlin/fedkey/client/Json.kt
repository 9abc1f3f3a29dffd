package fedkey.client

/**
 * A small, strict JSON reader (RFC 8259) so that the library needs no JSON dependency: on Android the
 * platform's org.json would clash with a desktop copy, and the manifest is all we read.
 *
 * Values map to: object → [Map] (insertion order kept), array → [List], string → [String],
 * integer literal that fits a Long → [Long], any other number → [Double], true/false → [Boolean], null → null.
 */
object Json {
    class ParseError(message: String) : IllegalArgumentException(message)

    fun parse(text: String): Any? {
        val p = Parser(text)
        p.skipWs()
        val value = p.value(0)
        p.skipWs()
        if (p.pos != text.length) throw ParseError("trailing characters at offset ${p.pos}")
        return value
    }

    private class Parser(val s: String) {
        var pos = 0

        fun skipWs() {
            while (pos < s.length && (s[pos] == ' ' || s[pos] == '\n' || s[pos] == '\r' || s[pos] == '\t')) pos++
        }

        fun fail(what: String): Nothing = throw ParseError("$what at offset $pos")

        fun value(depth: Int): Any? {
            if (depth > 200) fail("nesting too deep")
            if (pos >= s.length) fail("unexpected end of input")
            return when (val c = s[pos]) {
                '{' -> obj(depth)
                '[' -> arr(depth)
                '"' -> str()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c in '0'..'9') num() else fail("unexpected character '$c'")
            }
        }

        fun literal(word: String, v: Any?): Any? {
            if (!s.startsWith(word, pos)) fail("invalid literal")
            pos += word.length
            return v
        }

        fun obj(depth: Int): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            pos++
            skipWs()
            if (pos < s.length && s[pos] == '}') { pos++; return out }
            while (true) {
                skipWs()
                if (pos >= s.length || s[pos] != '"') fail("expected a string key")
                val key = str()
                skipWs()
                if (pos >= s.length || s[pos] != ':') fail("expected ':'")
                pos++
                skipWs()
                out[key] = value(depth + 1)
                skipWs()
                if (pos >= s.length) fail("unterminated object")
                when (s[pos]) {
                    ',' -> pos++
                    '}' -> { pos++; return out }
                    else -> fail("expected ',' or '}'")
                }
            }
        }

        fun arr(depth: Int): List<Any?> {
            val out = ArrayList<Any?>()
            pos++
            skipWs()
            if (pos < s.length && s[pos] == ']') { pos++; return out }
            while (true) {
                skipWs()
                out.add(value(depth + 1))
                skipWs()
                if (pos >= s.length) fail("unterminated array")
                when (s[pos]) {
                    ',' -> pos++
                    ']' -> { pos++; return out }
                    else -> fail("expected ',' or ']'")
                }
            }
        }

        fun str(): String {
            pos++ // opening quote
            val sb = StringBuilder()
            while (true) {
                if (pos >= s.length) fail("unterminated string")
                val c = s[pos++]
                when {
                    c == '"' -> return sb.toString()
                    c == '\\' -> {
                        if (pos >= s.length) fail("unterminated escape")
                        when (val e = s[pos++]) {
                            '"' -> sb.append('"'); '\\' -> sb.append('\\'); '/' -> sb.append('/')
                            'b' -> sb.append('\b'); 'f' -> sb.append('\u000c'); 'n' -> sb.append('\n')
                            'r' -> sb.append('\r'); 't' -> sb.append('\t')
                            'u' -> {
                                if (pos + 4 > s.length) fail("bad \\u escape")
                                val hex = s.substring(pos, pos + 4)
                                sb.append(hex.toIntOrNull(16)?.toChar() ?: fail("bad \\u escape"))
                                pos += 4
                            }
                            else -> fail("bad escape '\\$e'")
                        }
                    }
                    c < ' ' -> fail("control character in string")
                    else -> sb.append(c)
                }
            }
        }

        fun num(): Any {
            val start = pos
            if (s[pos] == '-') pos++
            while (pos < s.length && s[pos] in '0'..'9') pos++
            var integral = true
            if (pos < s.length && s[pos] == '.') {
                integral = false; pos++
                while (pos < s.length && s[pos] in '0'..'9') pos++
            }
            if (pos < s.length && (s[pos] == 'e' || s[pos] == 'E')) {
                integral = false; pos++
                if (pos < s.length && (s[pos] == '+' || s[pos] == '-')) pos++
                while (pos < s.length && s[pos] in '0'..'9') pos++
            }
            val text = s.substring(start, pos)
            if (text == "-" || text.endsWith(".") || text.endsWith("e") || text.endsWith("E")) fail("bad number")
            if (integral) text.toLongOrNull()?.let { return it }
            return text.toDoubleOrNull() ?: fail("bad number '$text'")
        }
    }
}

/** Typed accessors over parsed JSON, each failing with a message naming the field. */
internal fun Map<String, Any?>.obj(key: String): Map<String, Any?> =
    (this[key] as? Map<*, *>)?.let { m -> m.entries.associate { (k, v) -> k as String to v } }
        ?: throw IllegalArgumentException("'$key' must be an object")

internal fun Map<String, Any?>.list(key: String): List<Any?> =
    this[key] as? List<Any?> ?: throw IllegalArgumentException("'$key' must be an array")

internal fun Map<String, Any?>.str(key: String): String =
    this[key] as? String ?: throw IllegalArgumentException("'$key' must be a string")

internal fun Map<String, Any?>.long(key: String): Long =
    this[key] as? Long ?: throw IllegalArgumentException("'$key' must be an integer")

internal fun Map<String, Any?>.int(key: String): Int {
    val v = long(key)
    if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) throw IllegalArgumentException("'$key' is out of range")
    return v.toInt()
}

internal fun Map<String, Any?>.double(key: String): Double = when (val v = this[key]) {
    is Long -> v.toDouble()
    is Double -> v
    else -> throw IllegalArgumentException("'$key' must be a number")
}

@Suppress("UNCHECKED_CAST")
internal fun Any?.asObject(what: String): Map<String, Any?> =
    this as? Map<String, Any?> ?: throw IllegalArgumentException("$what must be an object")
