import numpy as np

from temde.data.word_vectors import GLOVE_DIM, glove_matrix, load_glove


def test_glove_rows_are_the_packaged_vectors_and_unknown_words_are_random():
    index, vectors = load_glove()
    words = ["<pad>", "<start>", "<end>", "<unk>", "apple", "zzqxjunkword", "the"]
    matrix, coverage = glove_matrix(words)
    assert matrix.shape == (7, GLOVE_DIM) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[4], vectors[index["apple"]])
    np.testing.assert_array_equal(matrix[6], vectors[index["the"]])
    assert np.all(matrix[0] == 0)
    assert np.abs(matrix[5]).sum() > 0
    assert coverage == 2 / 3
    # semantic sanity of the packaged data: apple is closer to pear than to tax
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    apple, pear, tax = (np.asarray(vectors[index[w]]) for w in ("apple", "pear", "tax"))
    assert cos(apple, pear) > cos(apple, tax)
