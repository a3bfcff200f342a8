"""EdgeLoop drift: data drift (PSI, KS) and concept drift (ADWIN) per model version and site."""
