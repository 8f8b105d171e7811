"""What other services import to submit inference jobs. Never imports torch.

from inferq.producer import submit_job, submit_many, gather

result = submit_job.delay(img, model="shapes").get(timeout=10)
"""

from inferq.producer.client import submit_job, submit_many
from inferq.producer.gather import gather

__all__ = ["gather", "submit_job", "submit_many"]
