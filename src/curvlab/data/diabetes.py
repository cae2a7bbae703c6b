"""scikit-learn's diabetes data: a real regression target that ships with the package.

442 patients, 10 baseline measurements each (age, sex, body-mass index, blood pressure and six
blood serum values) and, as target, a quantitative measure of disease progression one year
later (values 25..346).
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_diabetes

from curvlab.data.arrays import ArrayDataModule


class DiabetesDataModule(ArrayDataModule):
    """Diabetes features ``(n, 10)`` and progression targets ``(n, 1)``, standardised.

    Features and target are shifted and scaled by the mean and standard deviation of the
    *training* split, so validation and test stay unseen. The target's statistics are kept as
    ``target_mean`` and ``target_std``, so predictions can be reported in the original units.

    Args:
        standardize: apply the standardisation; False leaves the raw values (and sets
            ``target_mean = 0``, ``target_std = 1``).
        **kwargs: batch size, split fractions and seeds, as for :class:`ArrayDataModule`.
    """

    def __init__(self, standardize: bool = True, **kwargs: object) -> None:
        data = load_diabetes(scaled=False)
        x = torch.tensor(data.data, dtype=torch.float32)
        y = torch.tensor(data.target, dtype=torch.float32).unsqueeze(1)  # (n, 1)
        super().__init__(x, y, **kwargs)
        self.feature_names = list(data.feature_names)
        self.target_mean, self.target_std = 0.0, 1.0
        if not standardize:
            return

        # The split is fixed in super().__init__; its dataset holds x and y themselves, so the
        # in-place scaling below is what every split serves.
        train = torch.as_tensor(self.train_set.indices)
        x_mean, x_std = x[train].mean(0), x[train].std(0)
        y_mean, y_std = y[train].mean(), y[train].std()
        x.sub_(x_mean).div_(x_std)
        y.sub_(y_mean).div_(y_std)
        self.target_mean, self.target_std = float(y_mean), float(y_std)
