"""Tasks of models outside the MNIST zoo: how a rebuilt model is judged, what codecs retrain on."""
