#common.py
import time

def time_consuming_function(delay):
  time.sleep(delay)
  return delay
