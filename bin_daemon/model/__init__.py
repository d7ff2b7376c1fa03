"""The model: image preprocessing (the only OpenCV user), the int8 TFLite classifier (the
only interpreter user), the model store on the Pi, and evaluation metrics."""
