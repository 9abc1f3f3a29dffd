package fedkey.client

import java.text.Normalizer as JavaNormalizer

/**
 * The message normalisation of training and of the phone (docs/artifacts.md §4, Python `models/tokenizer.py`):
 * NFKC, lower case, U+2019 → `'`, then the tokens of `[^\W_]+(?:'[^\W_]+)*|[^\w\s]` joined by single spaces.
 *
 * The regular expression is applied by hand with Python's character classes: a word character is a letter or a
 * number (`\p{L}`, `\p{N}`), `\s` is Python's `str.isspace()` set (which, unlike Java's, includes U+001C–U+001F).
 */
object TextNormalizer {
    const val WORD_START = '\u2581'

    fun normalize(text: String): String {
        val s = JavaNormalizer.normalize(text, JavaNormalizer.Form.NFKC).lowercase().replace('\u2019', '\'')
        return tokens(s).joinToString(" ")
    }

    /** The tokens (words and one-character punctuation marks) of an already case-folded string. */
    fun tokens(s: String): List<String> {
        val cps = s.codePoints().toArray()
        val out = ArrayList<String>()
        var i = 0
        while (i < cps.size) {
            val c = cps[i]
            if (isWordChar(c)) {
                var j = i + 1
                while (true) {
                    while (j < cps.size && isWordChar(cps[j])) j++
                    // (?:'[^\W_]+)*: an apostrophe continues the word only when a word character follows it
                    if (j + 1 < cps.size && cps[j] == '\''.code && isWordChar(cps[j + 1])) j += 2 else break
                }
                out.add(String(cps, i, j - i))
                i = j
            } else {
                if (!isSpace(c) && c != '_'.code) out.add(String(cps, i, 1))
                i++
            }
        }
        return out
    }

    /** True for a suggestible word (letters/digits with inner apostrophes), false for punctuation. */
    fun isWord(token: String): Boolean {
        val t = tokens(token)
        return t.size == 1 && t[0] == token && isWordChar(token.codePointAt(0))
    }

    /** Python `str.isalnum()` as `[^\W_]` uses it: letters and numbers. */
    fun isWordChar(cp: Int): Boolean = when (Character.getType(cp).toByte()) {
        Character.UPPERCASE_LETTER, Character.LOWERCASE_LETTER, Character.TITLECASE_LETTER,
        Character.MODIFIER_LETTER, Character.OTHER_LETTER,
        Character.DECIMAL_DIGIT_NUMBER, Character.LETTER_NUMBER, Character.OTHER_NUMBER -> true
        else -> false
    }

    /** Python `str.isspace()`. */
    fun isSpace(cp: Int): Boolean = when (cp) {
        in 0x09..0x0D, in 0x1C..0x20, 0x85, 0xA0, 0x1680, in 0x2000..0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000 -> true
        else -> false
    }
}
