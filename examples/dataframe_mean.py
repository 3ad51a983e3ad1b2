"""The course's chunked DataFrame mean (script-df.py), rewritten for shoal.

    python examples/dataframe_mean.py [workers]
"""
import sys

import pandas as pd

import shoal

# default: the CPUs this job was given (the course used 4)
workers = int(sys.argv[1]) if len(sys.argv) > 1 else shoal.default_workers()

# Create a DataFrame with two sets of values ID and Value
data_df = pd.DataFrame({
    'ID': range(1, 10001),
    'Value': range(3, 20002, 2),  # Generate 10000 odd numbers starting from 3
})


# Define a function to calculate the sum of a vector
def calculate_sum(values):
    total_sum = sum(values)
    return total_sum


if __name__ == "__main__":  # kept from the course; shoal itself does not need it
    # Split the 'Value' column into chunks
    chunk_size = 1000
    value_chunks = [data_df['Value'][i:i + chunk_size]
                    for i in range(0, len(data_df['Value']), chunk_size)]

    # A pool of worker processes; the context manager releases them (and any
    # shared memory) at the end, even on an error
    with shoal.Pool(workers) as pool:
        # Map the calculate_sum function to each chunk of data in parallel
        results = pool.map(calculate_sum, value_chunks)

    # Combine the partial results to get the total sum
    total_sum = sum(results)

    # Compute the mean by dividing the total sum by the total length of the column 'Value'
    mean_value = total_sum / len(data_df['Value'])

    # Print the mean value
    print(mean_value)
