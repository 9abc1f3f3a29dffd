package fedkey.client

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.DynamicTest
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestFactory

class TokenizerTest {
    @Test
    fun `normalize follows the documented example`() {
        assertEquals("hey , i'm home !", TextNormalizer.normalize("Hey, I’m   HOME!"))
        assertEquals("don't stop", TextNormalizer.normalize("Don't_stop"))
        assertTrue(TextNormalizer.isWord("don't"))
        assertFalse(TextNormalizer.isWord("!"))
        assertFalse(TextNormalizer.isWord("a b"))
    }

    @Test
    fun `pieces and scores match the Python tokenizer`() {
        @Suppress("UNCHECKED_CAST")
        val pieces = Fixtures.expected()["pieces"] as List<String>
        val tok = Fixtures.bundle().tokenizer()
        assertEquals(pieces, tok.pieces)
        assertEquals(1, tok.unkId)
    }

    @TestFactory
    fun `normalize and encode equal Python`(): List<DynamicTest> {
        val cases = Fixtures.expected()["tokenizer"] as List<*>
        val tok = Fixtures.bundle().tokenizer()
        return cases.mapIndexed { i, c ->
            val case = c.asObject("case")
            DynamicTest.dynamicTest("case $i: ${case["text"].toString().take(30)}") {
                val normalized = TextNormalizer.normalize(case["text"] as String)
                assertEquals(case["normalized"], normalized)
                val expected = (case["ids"] as List<*>).map { (it as Long).toInt() }.toIntArray()
                assertArrayEquals(expected, tok.encode(normalized), "ids of '$normalized'")
            }
        }
    }
}

class LowerCaseTest {
    @Test
    fun `final sigma follows Python`() {
        // Expected values from Python's str.lower().
        assertEquals("οδος", TextNormalizer.pythonLower("ΟΔΟΣ"))
        assertEquals("zσ’c", TextNormalizer.pythonLower("ZΣ’C"))
        assertEquals("zς’ ", TextNormalizer.pythonLower("ZΣ’ "))
        assertEquals("σ", TextNormalizer.pythonLower("Σ"))
        assertEquals("aς.", TextNormalizer.pythonLower("AΣ."))
        assertEquals("i̇stanbul", TextNormalizer.pythonLower("İstanbul"))
    }
}
