"""Estimators are values: built the same way, they compare equal, hash alike and print readably."""

import vigrad


def test_estimators_with_control_variates_are_values():
    same = [vigrad.Score(vigrad.LeaveOneOut()), vigrad.Score(vigrad.LeaveOneOut())]
    assert same[0] == same[1] and hash(same[0]) == hash(same[1])
    assert vigrad.Score(vigrad.MovingAverage(0.9)) == vigrad.Score(vigrad.MovingAverage(0.9))
    assert vigrad.Score(vigrad.MovingAverage(0.9)) != vigrad.Score(vigrad.MovingAverage(0.8))
    assert vigrad.Score(vigrad.LeaveOneOut()) != vigrad.Score()
    assert repr(same[0]) == "Score(control_variate=LeaveOneOut())"
    assert vigrad.MVD() == vigrad.MVD() and vigrad.MVD() != vigrad.Enumerate()
