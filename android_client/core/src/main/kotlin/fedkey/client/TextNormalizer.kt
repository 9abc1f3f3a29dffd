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
        val s = pythonLower(JavaNormalizer.normalize(text, JavaNormalizer.Form.NFKC)).replace('\u2019', '\'')
        return tokens(s).joinToString(" ")
    }

    /**
     * Python's `str.lower()`: the full Unicode lower-case mapping, with Python's Final_Sigma rule for `Σ`
     * (`\p{cased}\p{case-ignorable}* Σ !(\p{case-ignorable}* \p{cased})` → `ς`, else `σ`). Java's own
     * final-sigma test uses word boundaries instead and differs, e.g. for `"zΣ’c"`.
     */
    fun pythonLower(s: String): String {
        if (s.indexOf(CAPITAL_SIGMA) < 0) return s.lowercase()
        val cps = s.codePoints().toArray()
        val sb = StringBuilder(s.length)
        for (i in cps.indices) {
            val c = cps[i]
            if (c != CAPITAL_SIGMA.code) {
                sb.append(String(Character.toChars(c)).lowercase())
                continue
            }
            var j = i - 1
            while (j >= 0 && isCaseIgnorable(cps[j])) j--
            var final = j >= 0 && isCased(cps[j])
            if (final) {
                j = i + 1
                while (j < cps.size && isCaseIgnorable(cps[j])) j++
                final = j == cps.size || !isCased(cps[j])
            }
            sb.append(if (final) '\u03C2' else '\u03C3')
        }
        return sb.toString()
    }

    private const val CAPITAL_SIGMA = '\u03A3'

    /** Unicode `Cased` (Java's isLowerCase/isUpperCase include Other_Lowercase/Other_Uppercase). */
    private fun isCased(cp: Int) = Character.isLowerCase(cp) || Character.isUpperCase(cp) || Character.isTitleCase(cp)

    /** Unicode `Case_Ignorable`: Mn, Me, Cf, Lm, Sk, or Word_Break MidLetter / MidNumLet / Single_Quote. */
    private fun isCaseIgnorable(cp: Int): Boolean = when (Character.getType(cp).toByte()) {
        Character.NON_SPACING_MARK, Character.ENCLOSING_MARK, Character.FORMAT, Character.MODIFIER_LETTER,
        Character.MODIFIER_SYMBOL -> true
        else -> cp in MID_LETTER_OR_QUOTE
    }

    private val MID_LETTER_OR_QUOTE = setOf(
        0x27, 0x2E, 0x3A, 0xB7, 0x387, 0x55F, 0x5F4, 0x2018, 0x2019, 0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A,
    )

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
