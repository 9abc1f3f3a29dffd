"""fedkey privacy: what a privacy team audits, in one place.

- `calibration`: analytic Gaussian (Balle & Wang 2018) and Laplace calibration to a clip bound;
- `mechanisms`: clipping, local noise, the central noised sum, adaptive quantile clipping;
- `accountant`: central DP-FedAvg accounting over rounds (dp-accounting RDP/PLD), budget, inverse questions;
- `ledger`: per-phone local-DP ledger (ε of exactly the reports a phone sent);
- `shuffle`: amplification by shuffling (Feldman, McMillan & Talwar 2021);
- `config`, `report`: DP settings as config, and the JSON/Markdown privacy report.
"""
