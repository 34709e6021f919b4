from telephony.dtmf import DtmfDeduper


def test_same_press_by_both_methods_counts_once():
    d = DtmfDeduper()
    assert d.accept(0.0, "1", "rfc4733")
    assert not d.accept(0.05, "1", "info")


def test_repeated_presses_by_one_method_all_count():
    d = DtmfDeduper()
    assert d.accept(0.0, "5", "rfc4733")
    assert d.accept(0.15, "5", "rfc4733")


def test_other_digit_or_late_duplicate_counts():
    d = DtmfDeduper()
    assert d.accept(0.0, "1", "rfc4733")
    assert d.accept(0.1, "2", "info")
    assert d.accept(1.0, "2", "rfc4733")
