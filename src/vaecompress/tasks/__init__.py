"""Tasks: how a rebuilt model is judged and what codecs retrain on, beyond the MNIST zoo's own
(`zoo.train`): distillation from the original model for any model (`distill`), MiniLM's
sentence task (`sentence`), synthetic inputs for the data-free codec (`probe`)."""
