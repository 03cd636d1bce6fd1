"""The SymPy symbols shared by every derivation (the names used in JSON output)."""
import sympy as sp

t = sp.Symbol("t", positive=True)
#: a second time, for two-point (per-step) formulas
t_next = sp.Symbol("t_next", positive=True)
x = sp.Symbol("x", real=True)
eta_X = sp.Symbol("eta_X", real=True)
eta_Z = sp.Symbol("eta_Z", real=True)
#: network output (velocity, x-, noise- or score-prediction)
m = sp.Symbol("m", real=True)
#: data variance of the Gaussian oracle
v = sp.Symbol("v", positive=True)
#: mean of the Gaussian data N(mu, v I) (derive/MATH.md §10)
mu = sp.Symbol("mu", real=True)
#: the centred variable w = x - beta mu of the data's Gaussian frame (derive/MATH.md §10)
w = sp.Symbol("w", real=True)
